"""Teacher backend on Hugging Face transformers: works on any machine torch runs on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.backends.base import GenerationSettings
from pipeline.backends.sampling import draw_row, sequence_generator
from pipeline.backends.verbalizer_scoring import verbalizer_logprobs
from pipeline.cache.rows import TeacherRow
from pipeline.errors import PipelineError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device '{device}' requested but no CUDA GPU is available")
    return device


class TransformersBackend:
    """Generates with `model.generate`, then scores prompt + response in one forward pass.

    Scoring the finished sequence (rather than keeping generation-time logits) makes the cache
    equal a plain forward of the stored tokens, whatever the KV-cache and padding did.
    """

    name = "transformers"
    can_sample = True

    def __init__(self, model_dir: Path, dtype: str = "float32", batch_size: int = 8, device: str = "cpu"):
        if dtype not in DTYPES:
            raise PipelineError(f"unknown dtype '{dtype}' (choose one of: {', '.join(DTYPES)})")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(self.device).eval()
        self.vocab_size = self.model.config.vocab_size
        self.max_k = self.vocab_size  # a full log-softmax: any k up to the vocabulary
        self.max_length = getattr(self.model.config, "max_position_embeddings", 1 << 30)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    def generate(self, prompts: Sequence[list[int]], settings: GenerationSettings, k: int, seed: int, draws: int | None = None, head: int = 0) -> list[TeacherRow]:
        answers = self.answer(prompts, settings, seed)
        return self.score([list(p) + a for p, a in zip(prompts, answers)], [len(p) for p in prompts], k, draws, seed, head)

    @torch.inference_mode()
    def answer(self, prompts: Sequence[list[int]], settings: GenerationSettings, seed: int, stop_ids: Sequence[int] | None = None) -> list[list[int]]:
        """`model.generate`'s answer to each prompt, cut after the first stop id (kept); no scoring.

        stop_ids None: the model's own (its generation config's EOS).
        """
        torch.manual_seed(seed)
        if stop_ids is None:
            eos = self.model.generation_config.eos_token_id
            stop_ids = (eos if isinstance(eos, list) else [eos]) if eos is not None else []
        eos_ids = set(stop_ids)
        answers: list[list[int]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            width = max(len(p) for p in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):  # left padding for generation
                input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
                attention_mask[row, width - len(prompt) :] = 1
            sampling = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p) if settings.temperature > 0 else dict(do_sample=False)
            generated = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=self.pad_id,
                top_k=None,
                **({"eos_token_id": list(stop_ids)} if stop_ids else {}),
                **sampling,
            )[:, width:].tolist()
            for response in generated:
                cut = next((i + 1 for i, t in enumerate(response) if t in eos_ids), len(response))
                answers.append(response[:cut])
        return answers

    @torch.inference_mode()
    def score(self, sequences: Sequence[list[int]], response_starts: Sequence[int], k: int, draws: int | None = None, seed: int = 0, head: int = 0) -> list[TeacherRow]:
        """Sequence i's draws come from its own generator, seeded by (seed, i): the same whatever the batching."""
        outputs: list[TeacherRow | None] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # less padding
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(sequences[i]) for i in rows)
            input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, i in enumerate(rows):  # right padding: causal positions never see it
                input_ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                attention_mask[row, : len(sequences[i])] = 1
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
            for row, i in enumerate(rows):
                seq, rs = sequences[i], response_starts[i]
                if not 0 < rs <= len(seq):
                    raise PipelineError(f"response start {rs} outside 1..{len(seq)}")
                logprobs = torch.log_softmax(logits[row, rs - 1 : len(seq) - 1].float(), dim=-1)
                if draws is not None:
                    outputs[i] = draw_row(seq, rs, logprobs, draws, sequence_generator(seed, i), head)
                    continue
                targets = torch.tensor(seq[rs:], device=logprobs.device)
                token_logprobs = logprobs.gather(-1, targets[:, None])[:, 0].cpu().numpy()
                top = logprobs.topk(k, dim=-1)
                outputs[i] = TeacherRow.top_k(
                    input_ids=np.asarray(seq, dtype=np.int32),
                    response_start=rs,
                    topk_ids=top.indices.to(torch.int32).cpu().numpy(),
                    topk_logprobs=top.values.cpu().numpy(),
                    token_logprobs=token_logprobs,
                )
        return outputs  # type: ignore[return-value]

    @torch.inference_mode()
    def continuation_logprobs(self, prompt: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Raw log-prob of every token of each continuation after the same prompt (several answers judged by this model).

        The prompt is run once and its KV cache repeated for the batch of continuations (right padded,
        so no position shifts): the same numbers as `score` on prompt + continuation, for about half the work.
        """
        if not continuations:
            return []
        if not prompt or any(not c for c in continuations):
            raise PipelineError("continuation_logprobs needs a non-empty prompt and non-empty continuations")
        out = self.model(input_ids=torch.tensor([list(prompt)], device=self.device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts every continuation's first token
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(continuations))
        width = max(len(c) for c in continuations)
        input_ids = torch.full((len(continuations), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(continuations), len(prompt) + width), dtype=torch.long)
        attention_mask[:, : len(prompt)] = 1
        for row, continuation in enumerate(continuations):
            input_ids[row, : len(continuation)] = torch.tensor(list(continuation))
            attention_mask[row, len(prompt) : len(prompt) + len(continuation)] = 1
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), past_key_values=cache, use_cache=True).logits
        result = []
        for row, continuation in enumerate(continuations):
            targets = torch.tensor(list(continuation), device=self.device)
            later = torch.log_softmax(logits[row, : len(continuation) - 1].float(), dim=-1).gather(-1, targets[1:, None])[:, 0]
            result.append(torch.cat([first[targets[:1]], later]).cpu().numpy())
        return result

    def verbalizer_logprobs(self, prompts: Sequence[Sequence[int]], verbalizers: Sequence[Sequence[int]]) -> np.ndarray:
        """Raw log-prob of each verbalizer's token sequence after each prompt: float64 [len(prompts), len(verbalizers)]."""
        return verbalizer_logprobs(self.model, self.pad_id, prompts, verbalizers, self.batch_size)
