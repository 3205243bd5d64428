"""Held-out prompts written elsewhere: AlpacaEval's 805 real instructions, with the reference answers it ships.

The teacher never answers them for a student to train on: they judge what students write
(pipeline.lm.generation). AlpacaEval's data is CC BY-NC 4.0, so it is not stored in this repository:
the judge stage fetches it with the package registry's own client (`pip download` of the sdist, whose
sha256 is checked) and writes a prompt file with `id`, `prompt`, `reference` and `dataset` columns.
Source, licence and the command: data/heldout/SOURCES.md.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file

log = logging.getLogger(__name__)

ALPACA_EVAL = "alpaca-eval==0.6.6"
ALPACA_EVAL_SDIST = "alpaca_eval-0.6.6.tar.gz"
ALPACA_EVAL_SHA256 = "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de"
ALPACA_EVAL_MEMBER = "alpaca_eval-0.6.6/example/outputs.json"
ALPACA_EVAL_ROWS = 805
DOWNLOAD = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", ALPACA_EVAL, "-d"]


def download_sdist(folder: Path) -> Path:
    """`pip download --no-deps --no-binary :all: alpaca-eval==0.6.6 -d folder` (the sdist: the wheel lacks the example data)."""
    result = subprocess.run([*DOWNLOAD, str(folder)], capture_output=True, text=True)
    path = Path(folder) / ALPACA_EVAL_SDIST
    if result.returncode != 0 or not path.exists():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"could not download {ALPACA_EVAL} from the package index ({last}); the held-out prompts need the package registry once")
    return path


def alpaca_eval_rows(sdist: Path) -> list[dict[str, Any]]:
    """The 805 records of the sdist's example/outputs.json as prompt rows: id (alpaca_eval-NNN, file order), prompt, reference, dataset."""
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            member = archive.extractfile(ALPACA_EVAL_MEMBER)
            if member is None:
                raise KeyError(ALPACA_EVAL_MEMBER)
            records = json.loads(member.read().decode("utf-8"))
    except (KeyError, OSError, tarfile.TarError, ValueError) as error:
        raise PipelineError(f"{sdist}: cannot read {ALPACA_EVAL_MEMBER} ({error})") from error
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"instruction", "output", "dataset"} <= set(r) for r in records):
        raise PipelineError(f"{sdist}: {ALPACA_EVAL_MEMBER} is not a list of records with instruction, output and dataset")
    return [{"id": f"alpaca_eval-{i:03d}", "prompt": r["instruction"], "reference": r["output"], "dataset": r["dataset"]} for i, r in enumerate(records)]


def fetch_alpaca_eval(out: Path, sdist: Path | None = None, sha256: str = ALPACA_EVAL_SHA256) -> int:
    """Write AlpacaEval's prompts to `out` (JSON Lines), from `sdist` or a fresh download; returns the row count.

    The archive's sha256 must be the recorded one, so every machine judges on the same prompts.
    """
    with tempfile.TemporaryDirectory(prefix="kd-heldout-") as folder:
        path = Path(sdist) if sdist is not None else download_sdist(Path(folder))
        actual = sha256_file(path)
        if actual != sha256:
            raise PipelineError(f"{path}: sha256 {actual[:12]} is not the recorded {sha256[:12]} of {ALPACA_EVAL_SDIST}: not the archive the held-out prompts were checked on")
        rows = alpaca_eval_rows(path)
    if len(rows) != ALPACA_EVAL_ROWS and sha256 == ALPACA_EVAL_SHA256:
        raise PipelineError(f"{ALPACA_EVAL_MEMBER} holds {len(rows)} records, not {ALPACA_EVAL_ROWS}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    log.info("held-out prompts: %d AlpacaEval instructions written to %s (CC BY-NC 4.0: do not redistribute)", len(rows), out)
    return len(rows)
