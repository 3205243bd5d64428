"""Student training as a team runs it: accumulation, resume, bf16, several processes, the shipped folder.

References are independent: a single large batch for accumulation, an uninterrupted run for resume,
fp32 for bf16, a plain single-process loop over the same global batches for torchrun, and a direct
HF load (and `student_agreement`) for the saved student.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_settings
from transformers import AutoModelForCausalLM

import pipeline.lm.trainer as lm_trainer
from pipeline.cache import Cache
from pipeline.errors import PipelineError
from pipeline.lm.batch import scored_counts
from pipeline.lm.metrics import student_agreement
from pipeline.lm.resume import STATE_FILE
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student import build_student
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import train_student
from pipeline.train_loop import learning_rate, read_loss_log

STUDENT = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}
BASE = {"model": STUDENT, "alpha": 0.7, "lr": 1e-2, "warmup_steps": 2, "seed": 0}


@pytest.fixture(scope="module")
def even_cache(tmp_path_factory, tiny_teacher, prepared) -> Path:
    """The tiny teacher's cache in shards of 4 rows, so batches of 2 are exactly pairs of batches of 1."""
    from pipeline.lm.teacher import run_teacher
    from pipeline.teacher_model import resolve_teacher

    out = tmp_path_factory.mktemp("cache") / "even"
    assert run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings(shard_rows=4)) is not None
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        if atol == 0:
            assert torch.equal(wa[name], wb[name]), name
        else:
            torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0, msg=name)


def test_accumulated_micro_batches_equal_one_large_batch(tmp_path, even_cache):
    big = train_student(even_cache, StudentSettings(**BASE, epochs=2, batch_size=2), tmp_path / "big").steps
    small = train_student(even_cache, StudentSettings(**BASE, epochs=2, batch_size=1, grad_accumulation=2), tmp_path / "small").steps
    assert len(big) == len(small)
    for a, b in zip(big, small):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    assert_same_weights(tmp_path / "big", tmp_path / "small", atol=2e-5)


def test_max_steps_replaces_epochs_and_wraps_the_stream(tmp_path, tiny_cache):
    per_epoch = -(-Cache.open(tiny_cache).splits["train"].rows // 4)  # batches span shards: ceil(rows / batch_size)
    steps = 2 * per_epoch + 1
    run = train_student(tiny_cache, StudentSettings(**BASE, batch_size=4, epochs=1, max_steps=steps), tmp_path / "student")
    assert [row["epoch"] for row in run.steps] == [step // per_epoch for step in range(steps)]


def test_saved_student_is_a_standard_folder_with_its_card(tmp_path, tiny_cache):
    loss_log = tmp_path / "loss.csv"
    run = train_student(tiny_cache, StudentSettings(**BASE, epochs=2, batch_size=4, eval_every=3), tmp_path / "student", loss_log=loss_log)
    folder = tmp_path / "student"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    cache = Cache.open(tiny_cache)
    reference = student_agreement(model, cache)["kl_to_teacher"]  # dense KL over the validation split
    assert [row["step"] for row in run.validation] == [*range(3, len(run.steps), 3), len(run.steps)]
    assert run.validation[-1]["val_kl"] == pytest.approx(reference, rel=1e-4)
    card = (folder / "README.md").read_text()
    assert cache.manifest.manifest_sha256 in card and cache.manifest.teacher.name in card
    assert f"{run.validation[-1]['val_kl']:.4f}" in card and '"alpha": 0.7' in card
    assert [row["step"] for row in read_loss_log(loss_log)] == list(range(len(run.steps)))
    assert read_loss_log(tmp_path / "loss-validation.csv") == [{k: float(v) for k, v in row.items()} for row in run.validation]


def crash_at_the_final_save(monkeypatch) -> None:
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(lm_trainer, "save_checkpoint", crash)


def test_resume_equals_an_uninterrupted_run_and_refuses_other_settings(tmp_path, tiny_cache, monkeypatch):
    settings = StudentSettings(**BASE, epochs=3, batch_size=4, save_every=5)
    whole = train_student(tiny_cache, settings, tmp_path / "whole", checkpoint_dir=tmp_path / "whole-state")
    assert not (tmp_path / "whole-state").exists()  # removed once the student is saved

    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        crash_at_the_final_save(patch)
        with pytest.raises(KeyboardInterrupt):
            train_student(tiny_cache, settings, tmp_path / "resumed", checkpoint_dir=state)
    saved = torch.load(state / STATE_FILE, weights_only=False)
    assert len(saved["steps"]) == (len(whole.steps) - 1) // 5 * 5  # the last multiple of save_every before the end

    with pytest.raises(PipelineError, match=r"another student\.lr \(0\.01 there, 0\.02 now\)"):
        train_student(tiny_cache, settings.updated("student", lr=2e-2), tmp_path / "other", checkpoint_dir=state)
    with pytest.raises(PipelineError, match=r"another student\.batch_size"):
        train_student(tiny_cache, settings.updated("student", batch_size=3), tmp_path / "other", checkpoint_dir=state)

    resumed = train_student(tiny_cache, settings.updated("student", save_every=7), tmp_path / "resumed", checkpoint_dir=state)
    assert resumed.steps == whole.steps and resumed.validation == whole.validation
    assert_same_weights(tmp_path / "whole", tmp_path / "resumed")


def test_bf16_loss_tracks_fp32(tmp_path, tiny_cache):
    fp32 = train_student(tiny_cache, StudentSettings(**BASE, epochs=2, batch_size=4), tmp_path / "fp32").steps
    bf16 = train_student(tiny_cache, StudentSettings(**BASE, epochs=2, batch_size=4, precision="bf16"), tmp_path / "bf16").steps
    assert len(fp32) == len(bf16)
    for a, b in zip(fp32, bf16):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.03)
    assert bf16[-1]["kd"] < bf16[0]["kd"]
    assert next(iter(weights(tmp_path / "bf16").values())).dtype == torch.float32  # master weights stay float32


def test_unknown_or_missing_device_is_one_clear_error(tmp_path, tiny_cache):
    with pytest.raises(PipelineError, match="student.device"):
        StudentSettings.from_section({"device": "tpu"}, "student")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA device is available"):
            train_student(tiny_cache, StudentSettings(**BASE, epochs=1, device="cuda"), tmp_path / "student")


# --- several processes and crashes: real processes ---------------------------------------------


def kd(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *map(str, args)]


def params_file(tmp_path: Path, **student) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"student": {**BASE, **student}}))
    return path


def two_rank_reference(cache_dir: Path, settings: StudentSettings) -> torch.nn.Module:
    """Two processes' training computed in one: each step is both ranks' next batches, one plain loss, no DDP."""
    cache = Cache.open(cache_dir)
    model = build_student(settings.model, cache.vocab_size, settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    epochs = []
    for epoch in range(settings.epochs):
        ranks = [list(stream_batches(cache, "train", settings.batch_size, settings.seed + epoch, settings.shuffle_rows, rank, 2)) for rank in (0, 1)]
        epochs += [(epoch, [ranks[0][i], ranks[1][i]]) for i in range(min(map(len, ranks)))]
    model.train()
    for step, (_, group) in enumerate(epochs):
        for g in optimizer.param_groups:
            g["lr"] = learning_rate(step, len(epochs), settings.lr, settings.warmup_steps)
        totals = tuple(sum(scored_counts(b, settings.positions)[i] for b in group) for i in (0, 1))
        optimizer.zero_grad()
        sum(b.loss(model, settings.training_objective(), totals)["loss"] for b in group).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_under_torchrun_equal_one_process_on_the_same_global_batches(tmp_path, tiny_cache, parallel):
    params = params_file(tmp_path, epochs=2, batch_size=2, parallel=parallel, device="cpu")
    out = tmp_path / "student"
    result = subprocess.run(kd("student", "--nproc", 2, "--cache", tiny_cache, "--out", out, "--params", params), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    settings = StudentSettings.from_section(yaml.safe_load(params.read_text())["student"], "student")
    reference = two_rank_reference(tiny_cache, settings).state_dict()
    trained = weights(out)
    for name, tensor in reference.items():
        torch.testing.assert_close(trained[name], tensor, atol=2e-5, rtol=0, msg=name)


def start_student(tmp_path: Path, cache: Path, params: Path, out: Path) -> subprocess.Popen:
    log = open(tmp_path / "student.log", "a")
    return subprocess.Popen(kd("student", "--cache", cache, "--out", out, "--params", params, "--loss-log", tmp_path / "loss.csv"), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_at_random_steps_then_the_same_command_finishes_the_same_student(tmp_path, tiny_cache):
    params = params_file(tmp_path, epochs=10, batch_size=2, save_every=2)
    reference = tmp_path / "reference"
    reference.mkdir()
    subprocess.run(kd("student", "--cache", tiny_cache, "--out", reference / "student", "--params", params, "--loss-log", reference / "loss.csv"), cwd=tmp_path, check=True, capture_output=True)
    total = len(read_loss_log(reference / "loss.csv"))

    out, state = tmp_path / "student", tmp_path / ".student-partial" / STATE_FILE
    rng = random.Random(0)
    targets = sorted(rng.sample(range(4, total - 24, 2), 3))  # kill once the saved state reaches each of these steps
    for kill, target in enumerate(targets, 1):
        process = start_student(tmp_path, tiny_cache, params, out)
        seen, deadline = None, time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            written = state.stat().st_mtime_ns if state.exists() else None
            if written is not None and written != seen:
                seen = written
                if len(torch.load(state, weights_only=False)["steps"]) >= target:  # the file is only ever replaced whole
                    time.sleep(rng.uniform(0.0, 0.05))  # land somewhere inside the next steps
                    break
            time.sleep(0.01)
        if process.poll() is not None:
            pytest.fail(f"the run ended before kill {kill} (at step {target} of {total}): " + (tmp_path / "student.log").read_text()[-2000:])
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not out.exists()
    finish = start_student(tmp_path, tiny_cache, params, out)
    assert finish.wait(timeout=300) == 0, (tmp_path / "student.log").read_text()[-2000:]
    assert "resuming from step" in (tmp_path / "student.log").read_text()
    assert_same_weights(reference / "student", out)
    steps = read_loss_log(tmp_path / "loss.csv")
    assert [row["step"] for row in steps] == list(range(total))
    assert steps == read_loss_log(reference / "loss.csv")
    assert not state.parent.exists()


VLLM_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=128, kv_cache_memory_bytes=256 * 2**20)
    out = llm.generate([{"prompt_token_ids": [1, 5, 9, 12]}], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    print("GENERATED", json.dumps(list(out[0].outputs[0].token_ids)))
"""


@pytest.mark.vllm
@pytest.mark.skipif(not __import__("importlib").util.find_spec("vllm"), reason="vllm is not installed")
def test_saved_student_is_served_by_vllm(tmp_path, tiny_cache):
    model = {**STUDENT, "hidden_size": 128, "num_attention_heads": 2}  # head_dim 64: a size vLLM's CPU attention supports
    train_student(tiny_cache, StudentSettings(**{**BASE, "model": model}, epochs=1, batch_size=4), tmp_path / "student")
    script = tmp_path / "serve.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "student")], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    generated = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("GENERATED ")).split(" ", 1)[1])
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    expected = hf.generate(torch.tensor([[1, 5, 9, 12]]), max_new_tokens=6, do_sample=False, min_new_tokens=6)[0, 4:].tolist()
    assert generated == expected


def test_one_named_gpu_for_several_processes_is_refused(monkeypatch):
    from pipeline.lm.parallel import training_processes

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PipelineError, match=r"cuda:1 names one GPU, but 2 processes"):
        with training_processes("cuda:1"):
            pass


def test_validation_during_training_is_a_bounded_seeded_sample(tiny_cache):
    """Whole split when it is small (what `kd evaluate` reports), else a seeded sample of about eval_positions positions."""
    from pipeline.lm.batch import DistillationStep
    from pipeline.lm.metrics import kl_to_teacher
    from pipeline.lm.parallel import training_processes
    from pipeline.lm.student import position_logits
    from pipeline.lm.validation import validation_kl

    cache = Cache.open(tiny_cache)
    model = build_student(STUDENT, cache.vocab_size, 0).eval()
    whole = StudentSettings(**BASE, eval_positions=None)
    with training_processes("cpu") as processes:
        full = validation_kl(DistillationStep(model, whole.training_objective()), cache, whole, processes)
        assert full == pytest.approx(student_agreement(model, cache, "validation")["kl_to_teacher"], rel=1e-5)
        sampled = StudentSettings(**BASE, eval_positions=5, batch_size=1)
        reference, positions = [], 0  # the same seeded stream, scored through full logits
        for batch in stream_batches(cache, "validation", 1, seed=sampled.seed):
            with torch.no_grad():
                reference.append(kl_to_teacher(position_logits(model, batch.input_ids, batch.attention_mask, batch.rows, batch.columns), batch))
            positions += batch.num_tokens
            if positions >= 5:
                break
        expected = torch.cat(reference).mean().item()
        assert validation_kl(DistillationStep(model, sampled.training_objective()), cache, sampled, processes) == pytest.approx(expected, rel=1e-5)
        assert validation_kl(DistillationStep(model, sampled.training_objective()), cache, sampled, processes) == validation_kl(
            DistillationStep(model, sampled.training_objective()), cache, sampled, processes
        )
    assert 5 <= positions < cache.splits["validation"].tokens and expected != full  # a sample, not the split
