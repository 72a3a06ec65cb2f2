"""A tiny generated benchmark in VQAv2 layout (PNG images + questions/annotations JSON), for tests,
benchmarks and smoke runs without downloads."""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUESTIONS = ("What color is the square?", "Is there a square in the image?", "How many squares are there?",
             "What is the main color of this picture, described in a few words if you can?")


def write_tiny_vqa_benchmark(root: str | Path, num_images: int = 6, questions_per_image: int = 2, seed: int = 0) -> dict:
    """Write images and VQAv2-layout JSON under `root`; returns the `vqav2` task options."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for image_id in range(1, num_images + 1):
        colour = rng.choice(sorted(COLOURS))
        image = Image.new("RGB", (rng.randint(40, 90), rng.randint(40, 90)), (245, 245, 245))
        ImageDraw.Draw(image).rectangle((5, 5, 30, 30), fill=COLOURS[colour])
        image.save(root / "images" / f"COCO_val2014_{image_id:012d}.jpg", quality=90)
        for k in range(questions_per_image):
            qid = image_id * 10 + k
            text = QUESTIONS[(image_id + k) % len(QUESTIONS)]
            answer = {0: colour, 1: "yes", 2: "1", 3: colour}[QUESTIONS.index(text)]
            questions.append({"image_id": image_id, "question": text, "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": text.split()[0].lower(),
                                "answer_type": "other", "multiple_choice_answer": answer,
                                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                                            for i in range(10)]})
    (root / "questions.json").write_text(json.dumps({"questions": questions}))
    (root / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    return {"questions": str(root / "questions.json"), "annotations": str(root / "annotations.json"),
            "image_root": str(root / "images")}
