"""How far each pruned start is from its teacher before any training: KL, top-1 agreement and CE on a cache's validation split.

Every candidate keeps some of the teacher's decoder layers (and optionally narrower MLPs), copied
exactly (`student.init: prune`); it is scored as `kd evaluate` scores a student. No training: the
figure says how much a student has to heal, and what each kept layer costs in parameters.

    python -m bench.prune_starts --cache data/cache --teacher models/smollm2-135m-instruct

`--only NAME ...` runs some of the candidates (names as printed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.cache.reader import Cache
from pipeline.errors import run_main
from pipeline.lm.metrics import student_agreement
from pipeline.lm.prune import PruneSettings, pruned_student
from pipeline.models import count_parameters

ALL = list(range(30))
CANDIDATES: dict[str, tuple[list[int], int | None]] = {  # SmolLM2-135M has 30 decoder layers, MLP width 1536
    "every6": (ALL[::6], None),
    "first4+last1": ([0, 1, 2, 3, 29], None),
    "first3+last2": ([0, 1, 2, 28, 29], None),
    "every4": (ALL[::4], None),
    "first6+last2": ([0, 1, 2, 3, 4, 5, 28, 29], None),
    "every3": (ALL[::3], None),
    "first8+last2": ([*range(8), 28, 29], None),
    "first12+last3": ([*range(12), 27, 28, 29], None),
    "drop-odd-5-25": ([i for i in ALL if not (i % 2 and 5 <= i <= 25)], None),
    "drop15-24": ([i for i in ALL if not 15 <= i <= 24], None),
    "first20+last2": ([*range(20), 28, 29], None),
    "drop20-24": ([i for i in ALL if not 20 <= i <= 24], None),
    "all-mlp512": (ALL, 512),
    "all-mlp768": (ALL, 768),
    "all-mlp1024": (ALL, 1024),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--teacher", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--only", nargs="+", default=None)
    args = parser.parse_args()
    cache = Cache.open(args.cache)
    print(f"{'start':<16}{'layers':>7}{'MLP':>6}{'params':>10}{'KL':>8}{'top-1':>7}{'CE':>8}")
    for name, (layers, width) in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        model = pruned_student(args.teacher, PruneSettings(layers=layers, intermediate_size=width), cache.vocab_size).eval()
        scores = student_agreement(model, cache, "validation", 8)
        print(
            f"{name:<16}{len(layers):>7}{width or 1536:>6}{count_parameters(model) / 1e6:>9.1f}M{scores['kl_to_teacher']:>8.3f}{scores['top1_agreement']:>7.3f}{scores['ce']:>8.3f}"
            f"   ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    run_main(main)
