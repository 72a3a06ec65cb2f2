"""Greedy and nucleus sampling over the LLM with a KV cache, for left-padded batches."""

from __future__ import annotations

from typing import Iterator

import torch


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
             **options) -> torch.LongTensor:
    """Left-padded batch in, `(B, T_new)` new tokens out (pad id after each sample's EOS): `stream_tokens`'
    steps stacked (`options` are its keywords: greedy or sampled, EOS ids, `image_sizes`, ...)."""
    steps = list(stream_tokens(model, input_ids, attention_mask, pixel_values, **options))
    return torch.stack(steps, dim=1) if steps else input_ids.new_zeros(input_ids.shape[0], 0)


def stream_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    image_sizes=None,
) -> Iterator[torch.LongTensor]:
    """One `(B,)` tensor of new tokens per step, as they are picked (streaming): greedy, or sampling with
    `temperature` and `top_p` (seeded by `generator`); after a sample's EOS its row gets the pad id.
    `image_sizes`: each image's (height, width), which anyres needs beside its views."""
    _check_generation_args(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_p)
    tokenizer = model.tokenizer
    eos_ids = _eos_ids(eos_token_id, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    attention_mask = attention_mask.to(torch.long)
    # Positions count real tokens only, so left padding does not shift them.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    inputs_embeds = model.embed_inputs(input_ids, pixel_values, image_sizes)
    step_kwargs = _last_logits_only(model.llm)
    cache_name = _cache_keyword(model.llm)
    out = model.llm(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache,
        **step_kwargs,
    )
    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    eos = torch.tensor(eos_ids, device=input_ids.device)
    for step in range(max_new_tokens):
        next_logits = out.logits[:, -1, :].float()
        next_token = _pick(next_logits, do_sample, temperature, top_p, generator)
        next_token = torch.where(finished, torch.full_like(next_token, pad_id), next_token)
        yield next_token
        finished |= torch.isin(next_token, eos)
        if finished.all() or step == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        next_position = position_ids[:, -1:] + 1
        position_ids = torch.cat([position_ids, next_position], dim=1)
        next_embeds = model.llm.get_input_embeddings()(next_token[:, None])
        if use_cache:
            out = model.llm(
                inputs_embeds=next_embeds, attention_mask=attention_mask, position_ids=next_position,
                use_cache=True, **{cache_name: getattr(out, cache_name)}, **step_kwargs,
            )
        else:
            inputs_embeds = torch.cat([inputs_embeds, next_embeds], dim=1)
            out = model.llm(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                **step_kwargs,
            )


def _last_logits_only(llm) -> dict:
    """Ask for the last position's logits only where the model supports it (saves B x T x vocab memory)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(llm.forward).parameters else {}


def _cache_keyword(llm) -> str:
    """The KV cache's name in the LLM's forward and output: `cache` (transformers >= 5.2x, where the old name
    warns on every call) or `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _eos_ids(eos_token_id, tokenizer) -> list[int]:
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        raise ValueError("no eos_token_id given and the tokenizer has no EOS token")
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def _check_generation_args(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_p) -> None:
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and not temperature > 0:
        raise ValueError(f"sampling needs temperature > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("generate() needs left padding: the last column of attention_mask has padding")
