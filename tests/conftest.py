"""Tiny models made on the spot: a BPE tokenizer trained on the shipped prompts and a random Llama.

head_dim is 64 (hidden 128, 2 heads) so the same fixtures suit the vLLM CPU backend.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "data" / "prompts.jsonl"
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


def make_tokenizer(vocab_size: int = 320, corpus: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = corpus or [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_llama(path: Path, tokenizer, seed: int = 0, layers: int = 2, head_scale: float = 8.0, hidden_size: int = 128) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=layers,
        intermediate_size=256,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a peakier output than default init, closer to a trained LM
        model.lm_head.weight.mul_(head_scale)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("models") / "tiny-teacher", make_tokenizer())


@pytest.fixture(scope="session")
def other_tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "other-tokenizer"
    make_tokenizer(vocab_size=300).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def small_prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("\n".join(PROMPTS.read_text().splitlines()[:20]) + "\n")
    return path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, small_prompts) -> Path:
    from pipeline.data import read_prompts, split_prompts, write_splits

    out = tmp_path_factory.mktemp("prepared")
    write_splits(split_prompts(read_prompts(small_prompts), 0.3, seed=0), out)
    return out


def cache_rows(cache_dir):
    """Every row of a complete cache, in manifest order, decoded to the version 1 shape."""
    import pyarrow.parquet as pq

    from pipeline.cache import read_manifest
    from pipeline.cache.codec import decode, rows_to_dicts
    from pipeline.cache.schema import encoding_of

    manifest = read_manifest(cache_dir)
    tables = [pq.read_table(cache_dir / entry["file"]) for split in manifest["splits"].values() for entry in split["shards"]]
    return [row for table in tables for row in rows_to_dicts(decode(table, encoding_of(manifest)))]


TINY_CACHE = {"drop_zero_level": False}  # the tiny teacher is so peaky that dropping would leave one id per position


def tiny_settings(**overrides):
    from pipeline.backends.base import GenerationSettings
    from pipeline.cache.codec import CacheEncoding
    from pipeline.lm.teacher import TeacherSettings

    generation = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=0)
    return TeacherSettings(**{"k": 8, "batch_size": 4, "shard_rows": 5, "generation": generation, "cache": CacheEncoding(**TINY_CACHE), **overrides})


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_teacher, prepared) -> Path:
    from pipeline.lm.teacher import run_teacher
    from pipeline.teacher_model import resolve_teacher

    out = tmp_path_factory.mktemp("cache") / "cache"
    assert run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings()) is not None
    return out


@pytest.fixture(scope="session")
def float32_cache(tmp_path_factory, tiny_teacher, prepared) -> Path:
    """The tiny teacher's cache in the exact float32 encoding (tiny_cache is the same run, compact)."""
    from pipeline.cache.codec import CacheEncoding
    from pipeline.lm.teacher import run_teacher
    from pipeline.teacher_model import resolve_teacher

    out = tmp_path_factory.mktemp("cache") / "float32"
    assert run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings(cache=CacheEncoding(encoding="float32"))) is not None
    return out


def error_line(args) -> str:
    """Run `kd ARGS` in-process; it must exit 1 with exactly one `error:` line, the last one printed (progress bars may come first)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.output
    return lines[-1]


@pytest.fixture
def tiny_student_params(tmp_path) -> Path:
    """A params file whose student is as small as a test can train in a second or two."""
    path = tmp_path / "params.yaml"
    path.write_text("student:\n  model: {hidden_size: 64, num_hidden_layers: 1, num_attention_heads: 1, intermediate_size: 64}\n")
    return path


@pytest.fixture
def cache_copy(tmp_path, tiny_cache) -> Path:
    """A copy of the tiny cache a test may damage, at tmp_path/work/cache (so that its parent can be a target too)."""
    out = tmp_path / "work" / "cache"
    shutil.copytree(tiny_cache, out)
    return out


def run(args, cwd, env: dict | None = None) -> str:
    """Run a command as a user would (the venv's python and dvc first on PATH); fail with its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", **(env or {})}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}\n" + result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path, tiny_teacher, small_prompts) -> Path:
    """A git + DVC repository with this repo's dvc.yaml, stages and library, set to the tiny teacher."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", "stages", "pipeline"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    (root / "data").mkdir()
    shutil.copy(small_prompts, root / "data" / "prompts.jsonl")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["teacher"].update(model=str(tiny_teacher), k=8, batch_size=4, shard_rows=5)
    params["teacher"]["generation"]["max_new_tokens"] = 8
    params["student"].update(epochs=2, max_steps=None, batch_size=4)  # init prune as params.yaml: the tiny teacher's first layer
    params["student"]["model"] = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128}
    params["evaluate"]["speed_sequences"] = 4
    small_judge(root, params)
    small_classify_path(root, params["classify"])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")  # bytecode in the code folders stages depend on is not a change
    return root


HELDOUT = [
    {"id": "h1", "prompt": "Name a fruit that is yellow.", "reference": "A banana."},
    {"id": "h2", "prompt": "What is two plus two?", "reference": "Four."},
    {"id": "h3", "prompt": "Say hello in French.", "reference": "Bonjour."},
    {"id": "h4", "prompt": "Give one word for happy.", "reference": "Glad."},
]


def small_judge(root: Path, params: dict) -> None:
    """The judge stage on four hand-made held-out prompts; the heldout_prompts stage (a download from the package index) is left out."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    del spec["stages"]["heldout_prompts"]
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    prompts = root / params["judge"]["prompts"]
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps(row) + "\n" for row in HELDOUT))
    params["judge"].update(sample=3, max_new_tokens=6, batch_size=4, bootstrap=50)


def small_classify_path(root: Path, classify: dict) -> None:
    """The classification stages on small samples of the shipped text sets with tiny students (edits `classify` in place)."""
    for folder in ("reviews", "real-reviews"):
        shutil.copytree(REPO / "data" / folder, root / "data" / folder)
    classify["data"]["train"]["sample"] = 40
    for name, count in (("imdb", 20), ("in_domain", 10), ("generated", 10)):
        classify["data"]["tests"][name]["sample"] = count
    classify["teacher"].update(batch_size=8, shard_rows=16)
    classify["student"].update(epochs=2, batch_size=8)
    for model in classify["student"]["models"].values():
        model.update(embedding_dim=8, hidden_size=8)  # the rest as params.yaml has it (teacher embeddings, vocab_lowest_ids)
    classify["evaluate"]["latency_examples"] = 2
