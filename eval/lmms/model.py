"""lmms-eval's ``mm`` model: ``lmms-eval --model mm --model_args pretrained=CKPT,batch_size=16 --tasks ...``.

lmms-eval finds it through the ``lmms_eval.models`` entry point that mm declares (see
``mm.integrations.lmms_eval_models``); installing mm with ``pip install -e .[lmms]`` is all it takes.

It is built on mm-eval's own pieces, so an lmms-eval answer is the answer ``mm-eval run`` gives to the same
prompt: the checkpoint is loaded by ``mm.loading.load_for_inference``, prompts are encoded, left-padded and decoded
by ``eval.runner.Generator`` (the checkpoint's chat template, one ``<image>`` line per image before the text
when the context has no placeholders of its own, as lmms-eval's ``llava`` model does) and answers come from
``mm.generation.generate``. Log-likelihoods are a forward pass over the prompt followed by the continuation
(right-padded batches), the continuation's tokens being those the joint tokenisation gives it.

``loglikelihood`` answers (``-log P(continuation | prompt)``, is_greedy): the NEGATED log-likelihood summed
over the continuation's tokens, because lmms-eval's multiple-choice scorer picks the choice with the
*smallest* value (``np.argmin``: its own models return a loss; lmms-eval issue #370). ``acc`` and ``acc_norm``
are then right; ``perplexity`` and ``acc_mutual_info``, which expect log-probabilities, are not (no bundled
lmms-eval task uses them).

Model arguments (``--model_args k=v,...``): ``pretrained`` (checkpoint directory or hub id), ``batch_size``
(requests per forward; lmms-eval's ``--batch_size`` when not given here), ``device`` (default: ``cuda`` on
this process's GPU under ``accelerate launch``/``torchrun``, else the CPU), ``dtype`` (default bf16 on GPU,
fp32 on CPU), ``template`` (default: the checkpoint's chat template), ``max_new_tokens`` (for requests whose
``gen_kwargs`` name none; 1024, lmms-eval's ``llava`` default), ``seed`` (of sampling, as ``mm-eval run
--seed``), ``trust_remote_code``.

A request's ``gen_kwargs`` are honoured: ``max_new_tokens`` (or ``max_gen_toks``), ``temperature`` (above 0
samples, as in lmms-eval's ``llava``, whatever ``do_sample`` says; else greedy), ``top_p`` and ``until`` (the
answer is cut before the first stop string; generation itself stops at the template's end of turn). Beam
search is not supported; multi-round tasks neither.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image
from tqdm import tqdm

from eval.distributed import Ranks
from eval.pipeline import pick_device
from mm.loading import load_for_inference
from eval.runner import GenerationSettings, Generator, conversation
from eval.tasks.base import Question

# gen_kwargs that need nothing from us (lmms-eval's defaults and LLaVA-era task settings)
_NOTHING_TO_DO = {"do_sample", "num_beams", "use_cache", "image_aspect_ratio", "image_sizes"}
_HANDLED = {"until", "max_new_tokens", "max_gen_toks", "temperature", "top_p"}


@dataclass(frozen=True)
class Sampling:
    """How one group of requests is generated (from their gen_kwargs)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    until: tuple[str, ...]


class MMModel(lmms):
    """An mm checkpoint behind lmms-eval's simple-model interface (``generate_until``, ``loglikelihood``)."""

    is_simple = True

    def __init__(self, pretrained: str, batch_size: int | str = 16, device: str | None = None,
                 dtype: str | None = None, template: str | None = None, max_new_tokens: int = 1024,
                 seed: int = 0, trust_remote_code: bool = False, max_batch_size: int | None = None,
                 **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"mm model: unknown model_args {sorted(unknown)}; valid: pretrained, batch_size, device, "
                             "dtype, template, max_new_tokens, seed, trust_remote_code")
        if str(batch_size).startswith("auto"):
            raise ValueError("mm model: batch_size=auto is not supported; give a number (e.g. batch_size=16)")
        ranks = Ranks.from_env()
        self._rank, self._world_size = ranks.rank, ranks.world_size
        self._device = pick_device(device, ranks)
        self._model, self.dtype = load_for_inference(str(pretrained), self._device, dtype,
                                                       trust_remote_code=trust_remote_code)
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        settings = GenerationSettings(batch_size=self.batch_size_per_gpu, max_new_tokens=self.default_max_new_tokens,
                                      template=template or self._model.config.chat_template, seed=int(seed))
        self.generator = Generator(self._model, settings, self.dtype)
        self._warned: set[str] = set()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "MMModel":
        """As lmms-eval's, except that a ``--model_args`` value wins over the same CLI option
        (``batch_size=16`` in model_args next to the CLI's default ``--batch_size 1``)."""
        args = lmms_utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    # lmms-eval reads these
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._model.tokenizer

    @property
    def device(self) -> torch.device:
        return torch.device(self._device)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self) -> int:
        return self.generator.stop_ids[0]

    # ------------------------------------------------------------------ requests -> mm questions
    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual: Callable | None, task: str, split: str, doc_id: int) -> list[Image.Image]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self._doc(task, split, doc_id))
        if visuals is None:
            return []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        flat = []
        for visual in visuals:
            items = visual if isinstance(visual, (list, tuple)) else [visual]
            for item in items:
                if not isinstance(item, Image.Image):
                    raise ValueError(f"mm model: task {task!r} gives a {type(item).__name__} visual (doc {doc_id}); "
                                     "mm takes images only")
                flat.append(item)
        return flat

    def _question(self, context: str, visuals: Sequence[Image.Image], where: str) -> Question:
        """The Question ``Generator.encode`` turns into a prompt: a context without placeholders gets one
        ``<image>`` line per image before it (``eval.runner.conversation``); a context with them keeps its own."""
        image_token = self._model.config.image_token
        placeholders = context.count(image_token)
        if placeholders == 0:
            return Question(where, context, tuple(visuals))
        if placeholders != len(visuals):
            raise ValueError(f"mm model: {where} has {placeholders} {image_token} placeholders "
                             f"for {len(visuals)} images")
        return Question(where, context, ())

    def _pixels(self, images: Sequence[Image.Image]) -> dict:
        """The model's image arguments: normalised views in placeholder order on its device, and sizes."""
        inputs = self.generator.prepare(images)
        if inputs is None:
            return {"pixel_values": None}
        pixels = self.generator.transform.normalize(inputs.views.to(self._device), self.dtype)
        return {"pixel_values": pixels, "image_sizes": inputs.sizes}

    # ------------------------------------------------------------------ generate_until
    def _sampling(self, gen_kwargs: dict | None, task: str) -> Sampling:
        gen_kwargs = dict(gen_kwargs or {})
        if int(gen_kwargs.get("num_beams") or 1) > 1:
            raise ValueError(f"mm model: task {task!r} asks for beam search (num_beams={gen_kwargs['num_beams']}); "
                             "mm generates greedily or by sampling")
        ignored = sorted(set(gen_kwargs) - _HANDLED - _NOTHING_TO_DO)
        if ignored and task not in self._warned:
            self._warned.add(task)
            logger.warning(f"mm model: task {task!r} gen_kwargs {ignored} are ignored")
        until = gen_kwargs.get("until")
        until = [until] if isinstance(until, str) else list(until or [])
        max_new = gen_kwargs.get("max_new_tokens", gen_kwargs.get("max_gen_toks"))
        top_p = gen_kwargs.get("top_p")
        return Sampling(max_new_tokens=int(max_new if max_new is not None else self.default_max_new_tokens),
                        temperature=float(gen_kwargs.get("temperature") or 0.0),
                        top_p=float(top_p) if top_p not in (None, 0) else 1.0,
                        until=tuple(stop for stop in until if stop))

    def generate_until(self, requests: list[Instance]) -> list[str]:
        prepared = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            prepared.append((self._question(context, visuals, f"{task}/{split}/{doc_id}"), visuals,
                             self._sampling(gen_kwargs, task)))
        answers: list[str | None] = [None] * len(requests)
        # Requests with the same settings share batches; longest contexts first (less padding, early OOM).
        order = sorted(range(len(prepared)), key=lambda i: (repr(prepared[i][2]), -len(prepared[i][0].prompt), i))
        with tqdm(total=len(requests), disable=self.rank != 0, desc="mm generate_until") as bar:
            for batch in _batches(order, self.batch_size, key=lambda i: prepared[i][2]):
                sampling = prepared[batch[0]][2]
                texts = self._generate([prepared[i][0] for i in batch],
                                       [image for i in batch for image in prepared[i][1]], sampling)
                for i, text in zip(batch, texts):
                    answers[i] = text
                bar.update(len(batch))
        return answers

    def _generate(self, questions: list[Question], images: list[Image.Image], sampling: Sampling) -> list[str]:
        """mm-eval's Generator.answer under the request's max_new_tokens, temperature and top_p (sampling is
        seeded as mm-eval seeds it: by ``seed`` and the batch's question ids), cut at its stop strings."""
        settings = replace(self.generator.settings, max_new_tokens=sampling.max_new_tokens,
                           temperature=sampling.temperature, top_p=sampling.top_p)
        generator = self.generator
        if settings != generator.settings:
            generator = Generator(self._model, settings, self.dtype)
        return [_cut(text, sampling.until) for text in generator.answer(questions, generator.prepare(images))]

    # ------------------------------------------------------------------ loglikelihood
    def _scored_ids(self, context: str, continuation: str, visuals: Sequence[Image.Image], where: str):
        """Token ids of the prompt followed by the continuation, and the continuation's [start, end)."""
        from mm.chat import encode_prompt_and_continuation

        tokenizer = self.tokenizer
        if not context and not visuals:  # unconditional (lmms-eval's acc_mutual_info): after BOS, as lm-eval
            start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eot_token_id
            tokens = [start_id, *tokenizer(continuation, add_special_tokens=False)["input_ids"]]
            return tokens, 1, len(tokens)
        question = self._question(context, visuals, where)
        image_token = self._model.config.image_token
        try:
            tokens, start = encode_prompt_and_continuation(
                conversation(question, image_token), continuation, tokenizer, self.generator.settings.template,
                tokens_per_image=self._model.image_tokens.counts((image.height, image.width) for image in visuals),
                image_token=image_token)
        except ValueError as error:
            raise ValueError(f"mm model: {where}: {error}") from None
        return tokens, start, len(tokens)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(negative log-likelihood of the continuation, whether greedy decoding gives it) per request:
        the sign lmms-eval's multiple-choice scorer expects (it takes the argmin)."""
        prepared = []
        for request in requests:
            if len(request.args) == 2:  # ("", choice): unconditional, no visuals
                (context, continuation), visuals, where = request.args, [], "unconditional"
            else:
                context, target, doc_to_visual, doc_id, task, split = request.args
                continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
                if isinstance(continuation, (list, tuple)):  # a doc_to_target giving several answers: the first
                    continuation = continuation[0]
                visuals = self._visuals(doc_to_visual, task, split, doc_id)
                where = f"{task}/{split}/{doc_id}"
            prepared.append((*self._scored_ids(context, str(continuation), visuals, where), visuals))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(prepared)), key=lambda i: (-len(prepared[i][0]), i))
        with tqdm(total=len(requests), disable=self.rank != 0, desc="mm loglikelihood") as bar:
            for batch in _batches(order, self.batch_size):
                for i, result in zip(batch, self._score([prepared[i] for i in batch])):
                    results[i] = result
                bar.update(len(batch))
        return results

    @torch.inference_mode()
    def _score(self, rows) -> list[tuple[float, bool]]:
        """One right-padded forward pass; the summed negative log-probability of each continuation and
        whether greedy decoding would have produced it."""
        width = max(len(tokens) for tokens, *_ in rows)
        ids = torch.full((len(rows), width), self.generator.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (tokens, *_) in enumerate(rows):
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[i, : len(tokens)] = 1
        images = [image for *_, visuals in rows for image in visuals]
        logits = self._model(ids.to(self._device), attention_mask=mask.to(self._device), **self._pixels(images)).logits
        out = []
        for i, (tokens, start, end, _) in enumerate(rows):
            row_logits = logits[i, start - 1 : end - 1].float().log_softmax(-1)
            target = ids[i, start:end].to(row_logits.device)
            logprob = row_logits.gather(-1, target[:, None]).sum().item()
            out.append((-float(logprob), bool((row_logits.argmax(-1) == target).all())))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("mm model: multi-round tasks are not supported "
                                  "(generate_until and loglikelihood are)")


def _keep_loglikelihood_pairs() -> None:
    """Let (log-likelihood, is_greedy) pairs reach lmms-eval's scorers.

    lmms-eval 0.7's evaluator passes every model output through ``unwrap_generation_output``, which turns
    anything but text into its ``str()``; multiple-choice scoring then fails on ``"(-3.2, False)"``, for every
    model. While the installed lmms-eval does that, the evaluator's copy is wrapped to pass such pairs through.
    """
    from lmms_eval import evaluator

    original = getattr(evaluator, "unwrap_generation_output", None)
    if original is None or getattr(original, "keeps_loglikelihood_pairs", False):
        return
    if not isinstance(original((-1.0, True))[0], str):
        return  # fixed upstream

    def unwrap(output):
        if (isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], float)
                and isinstance(output[1], bool)):
            return output, None
        return original(output)

    unwrap.keeps_loglikelihood_pairs = True
    evaluator.unwrap_generation_output = unwrap


_keep_loglikelihood_pairs()


def _cut(text: str, until: Sequence[str]) -> str:
    """The text before the first of the stop strings."""
    for stop in until:
        text = text.split(stop, 1)[0]
    return text


def _batches(order: Sequence[int], size: int, key: Callable[[int], Any] | None = None) -> Iterator[list[int]]:
    """Consecutive runs of ``order`` of at most ``size`` items, each of one ``key``."""
    batch: list[int] = []
    for index in order:
        if batch and (len(batch) == size or (key is not None and key(index) != key(batch[0]))):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch
