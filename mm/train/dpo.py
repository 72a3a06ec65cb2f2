"""Preference losses and the log-probabilities they compare.

Every loss here takes, per pair i, the summed log-probabilities of the chosen answer y_w and the rejected
answer y_l under the trained policy (pi) and under the frozen reference (ref), and returns one loss per pair
(the caller averages over pairs):

- `sigmoid`, DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
  Reward Model", Eq. 7): with h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)],
  loss = -log sigmoid(beta * h).
  With `label_smoothing` eps, conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences
  and relationship to IPO"): labels are assumed flipped with probability eps,
  loss = -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h).
- `ipo`, IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", Eq. 17 with tau = beta): loss = (h' - 1 / (2 beta))^2, where h' compares the log-ratios
  averaged per answer token (as TRL does, the normalisation confirmed by the IPO authors; it keeps beta
  comparable across answer lengths).
- the optional SFT term of RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization", Eq. 1):
  alpha * (-log pi(y_w) / |y_w|), the chosen answer's mean token NLL, added to the pair's loss.

The implicit rewards are beta * (log pi - log ref), per answer (DPO, Section 5).

A sequence's log-probability is the sum over its labelled positions (the answer tokens, `mm.chat` label
masks) of log p(label | prefix); padding and truncation never enter it (test: a padded batch of mixed
lengths equals the rows one at a time).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mm.atomic import write_json_atomic
from mm.chat import IGNORE_INDEX

log = logging.getLogger(__name__)

LOSS_TYPES = ("sigmoid", "ipo")


# ----------------------------------------------------------------------------- log-probabilities
def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(label) over each row's labelled positions, their count), from full logits (B, T, V) and
    labels (B, T) aligned with the inputs (shifted here: position t predicts label t + 1)."""
    targets = labels[:, 1:].to(logits.device)
    keep = targets != IGNORE_INDEX
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token * keep).sum(dim=-1), keep.sum(dim=-1)


def model_logps(vlm, batch: dict, pixel_values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` of the model on a batch (labels of image placeholders ignored, as in training).

    Where the LLM's logits are a plain linear head on the decoder's states, the head runs on the labelled
    positions only (the full (B, T, vocab) logits are never made), as `VisionLanguageModel.forward` does
    for the training loss; otherwise through the full logits.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    labels = batch["labels"].masked_fill(input_ids == vlm.image_token_id, IGNORE_INDEX)
    image_sizes = batch.get("image_sizes")
    if not vlm._head_is_plain_linear():
        logits = vlm(input_ids, pixel_values=pixel_values, attention_mask=attention_mask, image_sizes=image_sizes).logits
        return sequence_logps(logits, labels)
    embeds = vlm.embed_inputs(input_ids, pixel_values, image_sizes)
    hidden = vlm.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    logits = vlm.llm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token = -F.cross_entropy(logits, targets[keep], reduction="none")
    rows = torch.arange(targets.shape[0], device=hidden.device).unsqueeze(1).expand_as(targets)[keep]
    sums = torch.zeros(targets.shape[0], device=hidden.device, dtype=token.dtype).index_add(0, rows, token)
    return sums, keep.sum(dim=-1)


# ----------------------------------------------------------------------------- losses
@dataclass
class PairTerms:
    """Per pair: the loss, and what is logged."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> PairTerms:
    """Per-pair preference losses (see the module docstring for the formulas and papers).

    Args:
        policy_chosen, policy_rejected, reference_chosen, reference_rejected: (P,) summed answer log-probs.
        loss_type: `sigmoid` (DPO; cDPO with `label_smoothing`) or `ipo`.
        beta: DPO beta / IPO tau.
        label_smoothing: cDPO's label-flip probability, in [0, 0.5).
        sft_weight: RPO's alpha: weight of the chosen answer's mean token NLL.
        chosen_tokens, rejected_tokens: (P,) answer token counts (needed by `ipo` and the SFT term).
    """
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    if loss_type == "sigmoid":
        margin = beta * (chosen_ratio - rejected_ratio)
        losses = -(1.0 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    elif loss_type == "ipo":
        if label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only")
        h = chosen_ratio / _tokens(chosen_tokens) - rejected_ratio / _tokens(rejected_tokens)
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {loss_type!r}; valid: {list(LOSS_TYPES)}")
    if sft_weight:
        losses = losses + sft_weight * (-policy_chosen / _tokens(chosen_tokens))
    return PairTerms(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def _tokens(counts: torch.Tensor | None) -> torch.Tensor:
    if counts is None:
        raise ValueError("this loss needs the answers' token counts (chosen_tokens, rejected_tokens)")
    return counts.clamp(min=1).to(torch.float32)


# ----------------------------------------------------------------------------- precomputed reference
def pair_key(sample_key: str) -> str:
    """A pair's key in the reference file: the shard's folder and file names and the record's key
    (`<url>#<key>` with the folders above dropped, so the file stays valid when the shard tree moves; the
    folder keeps a train and a validation split, both `shard-000000.tar`, apart)."""
    url, _, key = sample_key.rpartition("#")
    return f"{'/'.join(url.rsplit('/', 2)[-2:])}#{key}"


def reference_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class ReferenceLogps:
    """Reference log-probs of every pair, computed once by a first pass: {pair key: (chosen, rejected)}.

    The file is JSON: `{"settings": {...}, "logps": {key: [chosen, rejected]}}`; `settings` (the starting
    model and the data settings that change the encoding) must match the run's, or the file is refused.
    """

    def __init__(self, settings: dict, logps: dict[str, tuple[float, float]]):
        self.settings, self.logps = settings, logps

    @classmethod
    def load(cls, path: str | Path, settings: dict) -> "ReferenceLogps":
        saved = json.loads(Path(path).read_text())
        if saved.get("settings") != settings:
            raise ValueError(
                f"{path} holds reference log-probs for other settings ({saved.get('settings')}, this run: {settings}); "
                "delete it or set --model.policy.dpo_reference_logps to another file"
            )
        return cls(settings, {key: tuple(value) for key, value in saved["logps"].items()})

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, {"settings": self.settings, "logps": {k: list(v) for k, v in self.logps.items()}},
                          indent=None)

    def lookup(self, keys: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) reference log-probs of the batch's pairs, in order."""
        try:
            values = [self.logps[pair_key(key)] for key in keys]
        except KeyError as error:
            raise KeyError(
                f"no precomputed reference log-probs for pair {error.args[0]!r}: the file was computed for other "
                "shards; delete it to recompute"
            ) from None
        table = torch.tensor(values, dtype=torch.float64, device=device).float()
        return table[:, 0], table[:, 1]
