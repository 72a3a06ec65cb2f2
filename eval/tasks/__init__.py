"""Exact-key registry of evaluation tasks."""

from __future__ import annotations

from eval.tasks import choice, gqa, ifeval_mm, mme, mmbench, pope, vqa
from eval.tasks import llava_bench, mmvet, synth_detail
from eval.tasks.base import Question, Task, TaskDataError

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("vqav2", "VQAv2 val, official VQA accuracy", vqa.VQAv2Options, vqa.read_vqav2, vqa.score_vqav2),
        Task("okvqa", "OK-VQA val (VQAv2 layout), official VQA accuracy", vqa.VQAv2Options, vqa.read_vqav2, vqa.score_vqav2),
        Task("vizwiz", "VizWiz val, VizWiz's VQA accuracy", vqa.VizWizOptions, vqa.read_vizwiz, vqa.score_vizwiz),
        Task("textvqa", "TextVQA val, TextVQA evaluator", vqa.TextVQAOptions, vqa.read_textvqa, vqa.score_textvqa),
        Task("gqa", "GQA testdev-balanced, exact match", gqa.GQAOptions, gqa.read_gqa, gqa.score_gqa),
        Task("pope", "POPE adversarial/popular/random", pope.POPEOptions, pope.read_pope, pope.score_pope),
        Task("mme", "MME perception and cognition", mme.MMEOptions, mme.read_mme, mme.score_mme),
        Task("scienceqa_img", "ScienceQA test, image subset", choice.ScienceQAOptions, choice.read_scienceqa,
             choice.score_scienceqa),
        Task("mmbench", "MMBench dev, circular evaluation", mmbench.MMBenchOptions, mmbench.read_mmbench,
             mmbench.score_mmbench, mmbench.mmbench_prediction_id),
        Task("seed", "SEED-Bench image questions", choice.SEEDOptions, choice.read_seed, choice.score_seed),
        Task("synth_vqa", "mm-prep synth VQA split, accuracy next to chance", vqa.SynthVQAOptions, vqa.read_synth_vqa,
             vqa.score_synth_vqa),
        Task("synth_detail", "mm-prep synth --detail: tiny objects in large images, accuracy next to chance",
             synth_detail.SynthDetailOptions, synth_detail.read_synth_detail, synth_detail.score_synth_detail),
        Task("synth_pope", "mm-prep synth POPE splits", pope.SynthPOPEOptions, pope.read_synth_pope, pope.score_pope),
        Task("ifeval_mm", "IFEval instructions on image prompts, single- and multi-turn (MMMT-IF PIF)",
             ifeval_mm.IFEvalMMOptions, ifeval_mm.read_ifeval_mm, ifeval_mm.score_ifeval_mm),
        Task("synth_mc", "mm-prep synth multiple choice (SEED layout)", choice.SynthMCOptions, choice.read_synth_mc,
             choice.score_seed),
        Task("llava_bench", "LLaVA-Bench (In-the-Wild / COCO), judge review, relative score",
             llava_bench.LLaVABenchOptions, llava_bench.read_llava_bench, llava_bench.score_llava_bench,
             score_writes_files=True),
        Task("mmvet", "MM-Vet, judge grades 0-1, total and per capability", mmvet.MMVetOptions, mmvet.read_mmvet,
             mmvet.score_mmvet, mmvet.mmvet_prediction_id, score_writes_files=True),
    )
}


class UnknownTaskError(KeyError):
    """A task name that is not registered."""


def get_task(name: str) -> Task:
    """The task registered under exactly `name`."""
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "Question", "Task", "TaskDataError", "UnknownTaskError", "get_task"]
