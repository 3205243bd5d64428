"""Stage prepare: validate the prompt set, give rows stable ids, split train/validation."""

from pathlib import Path

from pipeline.data import read_prompts, split_prompts, write_splits
from pipeline.errors import run_main
from stages import load_params


def main() -> None:
    data = load_params()["data"]
    prompts = read_prompts(Path(data["prompts"]), data.get("text_column", "prompt"))
    splits = split_prompts(prompts, data["validation_fraction"], data["seed"])
    write_splits(splits, Path("data/prepared"))
    print(", ".join(f"{name}: {frame.height} prompts" for name, frame in splits.items()))


if __name__ == "__main__":
    run_main(main)
