"""Do two checkouts of the code write the same bytes? Caches of every storage and encoding, a conversion and students, side by side.

Run from a checkout; `--against` is another checkout (e.g. `git worktree add /tmp/before HEAD~1`).
Each tree, in a process of its own, builds the tests' tiny teacher, writes a top-k, a sampled, a
hybrid and a float32 cache, converts the hybrid one to a coarser encoding and trains a student on
each of the first three; then every file's sha256 is compared (both write into the same folder
name, so recorded paths agree). Prints the files that differ, or that all are identical.

    python -m bench.same_outputs --against /tmp/before

Exits 1 when a file differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = """
import sys
from pathlib import Path
out = Path(sys.argv[1])
from tests.conftest import PROMPTS, make_llama, make_tokenizer, tiny_settings
from pipeline.cache.codec import CacheEncoding
from pipeline.cache.convert import convert_cache
from pipeline.data import read_prompts, split_prompts, write_splits
from pipeline.lm.teacher import run_teacher
try:
    from pipeline.lm.student_settings import StudentSettings
    from pipeline.lm.trainer import train_student
except ImportError:  # a checkout from before lm/training.py was split
    from pipeline.lm.training import StudentSettings, train_student
from pipeline.teacher_model import resolve_teacher
teacher_dir = make_llama(out / "teacher", make_tokenizer())
prompts = out / "prompts.jsonl"
prompts.write_text("\\n".join(PROMPTS.read_text().splitlines()[:20]) + "\\n")
write_splits(split_prompts(read_prompts(prompts), 0.3, seed=0), out / "prepared")
teacher = resolve_teacher(str(teacher_dir), teacher_dir)
runs = {"topk": {}, "sampled": {"draws": 6}, "hybrid": {"draws": 6, "head": 2}, "float32": {"cache": CacheEncoding(encoding="float32", drop_zero_level=False)}}
for name, overrides in runs.items():
    run_teacher(out / "prepared", teacher, out / f"cache-{name}", tiny_settings(**overrides))
convert_cache(out / "cache-hybrid", out / "cache-hybrid-coarse", CacheEncoding(sqrt_step=0.05, drop_zero_level=False))
student = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}
for name in ("topk", "sampled", "hybrid"):
    train_student(out / f"cache-{name}", StudentSettings(model=student, epochs=2, batch_size=4, warmup_steps=1), out / f"student-{name}")
"""


def outputs_of(tree: Path, folder: Path) -> dict[str, str]:
    """sha256 of every file one tree writes (the teacher and prompts it builds its outputs from excluded)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    subprocess.run([sys.executable, "-c", RUN, str(folder)], cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).parts[0] not in ("teacher", "prompts.jsonl")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "outputs"
        ours, theirs = outputs_of(REPO, folder), outputs_of(args.against.resolve(), folder)
    differ = sorted(name for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name))
    print(json.dumps({"files": len(ours), "differ": differ}, indent=1))
    print("all identical" if not differ else f"{len(differ)} file(s) differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
