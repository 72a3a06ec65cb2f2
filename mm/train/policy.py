"""What to train and how: the stage, learning rates, weight decay, schedule, LoRA, initialisation."""

from __future__ import annotations

from dataclasses import dataclass, field

# stage -> which parts train: (vision tower, projector, LLM). LoRA trains adapters on a frozen LLM.
STAGES = {
    "align": (False, True, False),
    "finetune": (False, True, True),
    "full": (True, True, True),
    "lora": (False, True, False),
    "dpo": (False, True, True),
    "dpo_lora": (False, True, False),
    "contrastive": (True, False, False),  # the tower with a small text encoder (mm.train.contrastive), no LLM
}
LORA_STAGES = ("lora", "dpo_lora")
PREFERENCE_STAGES = ("dpo", "dpo_lora")  # trained on preference pairs against a reference (mm.train.dpo)
DPO_LOSSES = ("sigmoid", "ipo")
DPO_REFERENCES = ("model", "precomputed")
CONTRASTIVE_STAGE = "contrastive"  # image-caption pairs, open_clip's losses (mm.train.contrastive_module)
CONTRASTIVE_LOSSES = ("clip", "siglip")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainingPolicy:
    """Training stage and optimisation settings."""

    stage: str = "finetune"
    """What trains: `align` (projector), `finetune` (projector + LLM), `full` (+ vision tower), `lora` (projector + LoRA on the LLM); `dpo` (projector + LLM) and `dpo_lora` (projector + LoRA) on preference pairs; `contrastive` (vision tower + a small text encoder) on image-caption pairs."""
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
    """Every weight (tower, projector, LLM) from an earlier run's export directory, e.g. when stage 1 trained a model from scratch; a `contrastive` stage's tower export sets the tower only."""
    init_seed: int = 0
    """Seed of every randomly initialised part, so that stage 2 rebuilds stage 1's random parts exactly."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more compute)."""
    dpo_loss: str = "sigmoid"
    """Preference loss (stages `dpo`, `dpo_lora`): `sigmoid` (DPO, Rafailov et al. 2023) or `ipo` (Azar et al. 2023)."""
    dpo_beta: float = 0.1
    """DPO beta (IPO: tau), the strength of the pull towards the reference model."""
    dpo_label_smoothing: float = 0.0
    """cDPO: the assumed probability that a preference label is flipped, in [0, 0.5) (loss `sigmoid`)."""
    dpo_sft_weight: float = 0.0
    """RPO alpha (Pang et al. 2024): weight of the chosen answers' mean token NLL added to the loss (0 = off)."""
    dpo_reference: str = "model"
    """Reference log-probs from `model` (a frozen copy of the starting model, in memory) or `precomputed` once by a first pass and stored in a file."""
    dpo_reference_logps: str | None = None
    """The file of precomputed reference log-probs; None = beside the first train shards, named by a hash of model and data settings."""
    dpo_disable_dropout: bool = True
    """Turn dropout off in the trained model, so policy and reference log-probs are deterministic and comparable."""

    contrastive_loss: str = "clip"
    """Contrastive loss (stage `contrastive`): `clip` (open_clip's ClipLoss, softmax) or `siglip` (SigLipLoss, sigmoid)."""
    contrastive_embed_dim: int = 64
    """Width of the shared image-text embedding (stage `contrastive`)."""
    contrastive_text_width: int = 64
    """Width of the text encoder's token embeddings and blocks (stage `contrastive`)."""
    contrastive_text_layers: int = 2
    """Transformer blocks of the text encoder; 0 = mean-pooled token embeddings (stage `contrastive`)."""
    contrastive_text_heads: int = 4
    """Attention heads of the text encoder's blocks; must divide its width (stage `contrastive`)."""
    contrastive_text_max_length: int = 32
    """Caption tokens the text encoder reads; longer captions are cut (stage `contrastive`)."""
    contrastive_local_loss: bool = False
    """open_clip's local_loss: each rank's loss over its own rows against the gathered batch (loss `clip`)."""
    contrastive_gather_with_grad: bool = False
    """open_clip's gather_with_grad: the gathered features carry gradients to the rank that made them (loss `clip`)."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; valid stages: {sorted(STAGES)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.dpo_loss not in DPO_LOSSES:
            raise ValueError(f"unknown dpo_loss {self.dpo_loss!r}; valid: {list(DPO_LOSSES)}")
        if self.dpo_reference not in DPO_REFERENCES:
            raise ValueError(f"unknown dpo_reference {self.dpo_reference!r}; valid: {list(DPO_REFERENCES)}")
        if not self.dpo_beta > 0:
            raise ValueError(f"dpo_beta must be > 0, got {self.dpo_beta}")
        if not 0.0 <= self.dpo_label_smoothing < 0.5:
            raise ValueError(f"dpo_label_smoothing must be in [0, 0.5), got {self.dpo_label_smoothing}")
        if self.dpo_label_smoothing and self.dpo_loss != "sigmoid":
            raise ValueError("dpo_label_smoothing (cDPO) applies to dpo_loss 'sigmoid' only")
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"unknown contrastive_loss {self.contrastive_loss!r}; valid: {list(CONTRASTIVE_LOSSES)}")
        for name in ("embed_dim", "text_width", "text_heads", "text_max_length"):
            if getattr(self, f"contrastive_{name}") < 1:
                raise ValueError(f"contrastive_{name} must be >= 1, got {getattr(self, f'contrastive_{name}')}")
        if self.contrastive_text_layers < 0:
            raise ValueError(f"contrastive_text_layers must be >= 0, got {self.contrastive_text_layers}")
        if self.contrastive_text_width % self.contrastive_text_heads:
            raise ValueError(f"contrastive_text_heads ({self.contrastive_text_heads}) must divide contrastive_text_width "
                             f"({self.contrastive_text_width})")
        if self.dpo_sft_weight < 0:
            raise ValueError(f"dpo_sft_weight must be >= 0, got {self.dpo_sft_weight}")

    @property
    def trains(self) -> tuple[bool, bool, bool]:
        """(vision tower, projector, LLM) fully trainable in this stage."""
        return STAGES[self.stage]
