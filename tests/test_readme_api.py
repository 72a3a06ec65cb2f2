"""The README's Python API example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section has one runnable example"
    return blocks[0]


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    exec(compile(python_api_example(), str(README), "exec"), namespace)
    assert (tmp_path / "tiny_checkpoint" / "model.safetensors").is_file()
    assert (tmp_path / "tiny_llava_hf" / "config.json").is_file()
    assert namespace["new_tokens"].shape[0] == 1
    assert namespace["model"].tokens_per_image == 64
