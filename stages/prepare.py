"""Stage prepare: validate the prompt set, give rows stable ids, split train/validation."""

from pathlib import Path

from pipeline.data import DataSettings, prepare_prompts
from pipeline.errors import run_main
from stages import params


def main() -> None:
    splits = prepare_prompts(params("data", DataSettings), Path("data/prepared"), overwrite=True)  # DVC owns the stage's outputs
    print(", ".join(f"{name}: {frame.height} prompts" for name, frame in splits.items()))


if __name__ == "__main__":
    run_main(main)
