"""lmms-eval bridge: `lmms-eval --model mm` runs lmms-eval's tasks on mm checkpoints (`eval.lmms.model`).
Light on import: lmms-eval is imported only when used.

``lmms_eval_models`` is the payload of the ``lmms_eval.models`` entry point (pyproject.toml): lmms-eval
loads it when it builds its model registry, so ``lmms-eval --model mm`` works once mm is installed with
``pip install -e .[lmms]``; no plugin environment variable is needed.
"""

from __future__ import annotations


def lmms_eval_models() -> list:
    """lmms-eval's model manifest for ``--model mm`` (``eval.lmms.model.MMModel``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="mm", simple_class_path="eval.lmms.model.MMModel")]
