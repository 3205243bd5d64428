"""Stage heldout_prompts: fetch AlpacaEval's 805 instructions (pip download of its sdist, sha256 checked) into the judge's prompt file.

The data is CC BY-NC 4.0, so it is fetched here rather than stored in the repository (data/heldout/SOURCES.md).
"""

from pathlib import Path

from pipeline.errors import run_main
from pipeline.lm.heldout import fetch_alpaca_eval

OUT = Path("data/heldout/alpaca_eval.jsonl")


def main() -> None:
    print(f"held-out prompts: {fetch_alpaca_eval(OUT)} in {OUT}")


if __name__ == "__main__":
    run_main(main)
