"""Write data/review-prompts.jsonl: varied prompts asking the teacher to write a short movie review.

The generated-text ablation of docs/classification.md: the teacher stage answers these prompts
(`kd prepare --validation-fraction 1`, `kd teacher`), `kd classify answers` turns the answers into
texts, and `kd classify teacher` labels them. Each prompt combines a tone, a genre, an aspect and a
style drawn with a seed, so the texts vary; the tone is in the prompt only to get both kinds of
review: it is not a label (the teacher's reading of the text is).

    python data/make_review_prompts.py --count 400 --seed 0 --out data/review-prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TONES = ["positive", "negative", "glowing", "scathing", "mildly positive", "mildly negative", "enthusiastic", "disappointed"]
GENRES = ["horror film", "romantic comedy", "war drama", "documentary", "animated film", "thriller", "science-fiction film", "western", "musical", "crime drama", "family film", "biopic"]
ASPECTS = ["the acting", "the plot", "the music", "the visuals", "the pacing", "the dialogue", "the ending", "the direction", "the characters", "the humour"]
STYLES = [
    "Write one sentence",
    "Write two sentences",
    "Write a short sentence, as a newspaper critic would,",
    "Write one casual sentence, as a viewer posting online would,",
    "Write a one-line blurb",
]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def review_prompts(count: int, seed: int) -> list[dict[str, str]]:
    """`count` distinct prompts, drawn with `seed`; ids p0000, p0001, ..."""
    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < count:
        style, tone, genre, aspect = rng.choice(STYLES), rng.choice(TONES), rng.choice(GENRES), rng.choice(ASPECTS)
        prompt = f"{style} of {article(tone)} {tone} review of {article(genre)} {genre}, about {aspect}. Answer with the review only."
        if prompt not in prompts:
            prompts.append(prompt)
    return [{"id": f"p{i:04d}", "prompt": prompt} for i, prompt in enumerate(prompts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("data/review-prompts.jsonl"))
    args = parser.parse_args()
    args.out.write_text("".join(json.dumps(row) + "\n" for row in review_prompts(args.count, args.seed)))


if __name__ == "__main__":
    main()
