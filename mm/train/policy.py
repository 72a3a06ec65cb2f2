"""What to train and how: the stage, learning rates, weight decay, schedule, LoRA, initialisation."""

from __future__ import annotations

from dataclasses import dataclass, field

# stage -> which parts train: (vision tower, projector, LLM). LoRA trains adapters on a frozen LLM.
STAGES = {
    "align": (False, True, False),
    "finetune": (False, True, True),
    "full": (True, True, True),
    "lora": (False, True, False),
}
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainingPolicy:
    """Training stage and optimisation settings."""

    stage: str = "finetune"
    """What trains: `align` (projector), `finetune` (projector + LLM), `full` (+ vision tower), `lora` (projector + LoRA on the LLM)."""
    lr: float = 2e-5
    """Peak learning rate of the LLM (and its LoRA adapters)."""
    projector_lr: float | None = None
    """Peak learning rate of the projector; None = `lr`."""
    vision_lr: float | None = None
    """Peak learning rate of the vision tower (stage `full`); None = `lr`."""
    weight_decay: float = 0.0
    """AdamW weight decay; never applied to norms, biases or embeddings."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_ratio: float = 0.03
    """Fraction of the optimizer steps with linear warmup from 0."""
    min_lr_ratio: float = 0.0
    """Cosine decay ends at this fraction of the peak learning rate."""
    lora_r: int = 64
    """LoRA rank (stage `lora`)."""
    lora_alpha: int = 16
    """LoRA scaling numerator (stage `lora`)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input (stage `lora`)."""
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """LLM module names that get LoRA adapters (stage `lora`)."""
    init_projector_from: str | None = None
    """Projector weights from an align run: its export directory or a Lightning checkpoint (.ckpt)."""
    init_from: str | None = None
    """Every weight (tower, projector, LLM) from an earlier run's export directory, e.g. when stage 1 trained a model from scratch."""
    init_seed: int = 0
    """Seed of every randomly initialised part, so that stage 2 rebuilds stage 1's random parts exactly."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more compute)."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; valid stages: {sorted(STAGES)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    @property
    def trains(self) -> tuple[bool, bool, bool]:
        """(vision tower, projector, LLM) fully trainable in this stage."""
        return STAGES[self.stage]
