"""The benchmark scripts' quick paths at their smallest sizes, so they do not rot (not a speed test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_anyres  # noqa: E402
import bench_dataload  # noqa: E402
import bench_train_step  # noqa: E402
import common  # noqa: E402
import run_all  # noqa: E402
import train_mix  # noqa: E402
from mm.data.samples import Sample  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _printed_result(capsys) -> dict:
    lines = [common.parse_result_line(line) for line in capsys.readouterr().out.splitlines()]
    results = [r for r in lines if r is not None]
    assert len(results) == 1, "a script prints exactly one result line"
    return results[0]


def test_dataload_smallest(tmp_path, capsys):
    result = bench_dataload.main(["--images", "4", "--batch-size", "3", "--rounds", "1", "--warmup", "0",
                                  "--workdir", str(tmp_path)])
    assert _printed_result(capsys) == json.loads(json.dumps(result))
    assert result["images"] == 4 and result["ours"] > 0
    assert set(result["reference"]) == {f"LLaVA-1.5: files + {name}" for name in ("CLIPImageProcessor",
                                                                                  "CLIPImageProcessorPil")}
    assert result["ratio"] == pytest.approx(result["ours"] / max(result["reference"].values()), rel=1e-2)
    assert result["met"] == (result["ratio"] >= result["target"])
    # Both paths letterbox the same pixels: their outputs differ by resampling rounding only.
    assert result["mean_abs_pixel_gap"] < 1.0
    assert list(tmp_path.iterdir()) == [], "the generated images are removed"


def test_photo_like_jpeg_is_coco_sized():
    data = bench_dataload.photo_like_jpeg(__import__("numpy").random.default_rng(0), 640, 480)
    assert data[:2] == b"\xff\xd8" and 80_000 < len(data) < 200_000


def test_train_step_smallest(capsys):
    result = bench_train_step.main(["--batch-size", "2", "--steps-per-round", "1", "--rounds", "1", "--warmup", "0",
                                    "--max-length", "600"])
    assert _printed_result(capsys)["ratio"] == result["ratio"]
    losses = list(result["losses"].values())
    assert len(losses) == 3 and max(losses) - min(losses) < 1e-3  # identical weights, identical targets
    assert result["ours_tokens_per_s"] > 0 and result["reference_tokens_per_s"] > 0
    assert result["mfu"] is None  # no peak known on CPU


def test_flop_counter_by_hand():
    counter = bench_train_step.FlopCounter(llm_params=10, projector_params=2, tower_params=3,
                                           tower_tokens_per_image=5, projector_tokens_per_image=4)
    image = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    samples = [Sample([1] * 7, [-100] * 7, [image]), Sample([1] * 3, [-100] * 3, [])]
    # 6*10*(7+3) + 6*2*(1 image * 4 tokens) + 2*3*(1 image * 5 tokens)
    assert counter(samples) == 600 + 48 + 30


def test_supervised_tokens_skip_the_first_label():
    assert train_mix.supervised_tokens(Sample([1, 2, 3, 4], [5, -100, 7, 8], [])) == 2


def test_llava_batches_never_mix_modalities():
    image = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    samples = [Sample([1], [1], [image] if i % 3 else [], key=str(i)) for i in range(30)]
    batches = train_mix.llava_batches(samples, 4, seed=0)
    assert len(batches) == 5 + 2  # 20 image samples, 10 text-only: full batches only
    assert all(len({bool(s.images) for s in batch}) == 1 for batch in batches)


def test_run_all_reports_missing_and_rewrites_only_the_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "BENCH_DIR", tmp_path)
    outcome = run_all.run_script("bench_nothing.py", [], timeout=5)
    assert outcome.status == "missing"
    (tmp_path / "bench_fail.py").write_text("import sys; print('boom'); sys.exit(3)")
    failed = run_all.run_script("bench_fail.py", [], timeout=30)
    assert failed.status == "failed" and "exit status 3" in failed.detail
    section = run_all.figures_section([outcome], "cmd")
    document = f"# B\n\nintro\n\n{run_all.MD_START}\nold\n{run_all.MD_END}\n\n## After\n"
    rewritten = run_all.replace_figures(document, section)
    assert rewritten.startswith("# B\n\nintro\n\n") and rewritten.endswith("\n\n## After\n")
    assert "old" not in rewritten and "| bench_nothing.py | - | - | missing |" in rewritten
    with pytest.raises(ValueError, match="markers"):
        run_all.replace_figures(f"{run_all.MD_END}\n{run_all.MD_START}", section)


def test_parse_result_line_ignores_other_output():
    assert common.parse_result_line('{"bench": "x", "ratio": 1}') == {"bench": "x", "ratio": 1}
    assert common.parse_result_line('{"loss": 1}') is None
    assert common.parse_result_line("{not json") is None
    assert common.parse_result_line("path  images/s") is None


def test_layout_counts_by_hand():
    def sample(n):
        return Sample([5] * n, [5] * n, [])

    figures = bench_train_step.layout([[sample(3), sample(5)], [sample(2)]], pad_id=0, max_length=8)
    # padded: 2 rows x 5 + 1 row x 2; rows of the longest: 5 + 5 (3 and 5 do not share a 5-row) + 2;
    # rows of 8: one row of 3 + 5, then 2.
    assert figures == {"real": 10, "padded": 12, "packed_rows_of_longest": 12, "packed_rows_of_8": 10}


def test_gpu_sizes_never_name_a_hub_model():
    for size in ("qwen2-0.5b", "qwen2-1.5b"):
        config = bench_train_step.build_size(size)
        assert config.vision.name_or_path == "" and config.llm.name_or_path == ""
        assert config.vision.model_config["image_size"] == 336 and config.vision.model_config["patch_size"] == 14
    with pytest.raises(ValueError, match="valid sizes"):
        bench_train_step.build_size("qwen2-7b")


def test_run_all_passes_the_device_only_to_scripts_that_take_one():
    import argparse

    args = argparse.Namespace(quick=True, device="cuda")
    assert run_all._script_args(args, "bench_train_step.py") == ["--quick", "--device", "cuda"]
    assert run_all._script_args(args, "bench_prep.py") == ["--quick"]  # a CPU job without --device


def test_anyres_smallest(capsys):
    result = bench_anyres.main(["--per-image", "1", "--steps-per-round", "1", "--rounds", "1", "--warmup", "0",
                                "--text-words", "4"])
    assert _printed_result(capsys)["ratio"] == result["ratio"]
    assert result["ratio"] > 0 and result["single_samples_per_s"] > 0  # one round, no warmup: not a speed check
    next_7b = result["tokens"]["llava-next-7b"]["images"]
    assert next_7b["COCO photo 640x480"] == {"views": 5, "tokens": 2340}  # 576 + 36 rows x (48 + a newline)
    assert all(row["views"] <= 5 for row in next_7b.values())  # LLaVA-NeXT's grids hold at most 2 x 2 tiles
    # The forecast is FlopCounter's formula with every view through the tower and projector, by hand:
    forecast, text = result["forecast_7b"], result["forecast_7b"]["text_tokens"]
    llm, projector, tower = (forecast["weights"][k] for k in ("llm", "projector", "tower"))

    def flops(tokens, views):
        return 6 * llm * (text + tokens) + 6 * projector * views * 576 + 2 * tower * views * 577

    assert forecast["frozen tower"]["COCO photo 640x480"] == pytest.approx(flops(2340, 5) / flops(576, 1), abs=1e-3)
    assert result["forecast_7b_samples_ratio"] == pytest.approx(1 / forecast["frozen tower"]["all five"], abs=1e-3)
    assert result["target"] is None and result["met"] is None
    assert "| anyres | 0." in run_all.summary_table([run_all.Outcome("bench_anyres.py", "ok", [result])])
    assert "| - |" in run_all.summary_table([run_all.Outcome("bench_anyres.py", "ok", [result])])


def test_anyres_onevision_grid_is_transformers_default():
    from transformers import LlavaOnevisionConfig

    shape = bench_anyres.SHAPES["onevision anyres_max_9"]
    assert [list(p) for p in shape.grid_pinpoints] == LlavaOnevisionConfig().image_grid_pinpoints
    assert run_all._script_args(__import__("argparse").Namespace(quick=True, device="cuda"), "bench_anyres.py") == [
        "--quick", "--device", "cuda"]
