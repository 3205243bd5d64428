#!/usr/bin/env python3
"""Generate the project's default sentiment set (data/reviews/{train,test}.jsonl).

Written for this project: short movie reviews built from hand-written sentence parts, with the
gold label fixed by construction (every part is written for one polarity, and a review's overall
verdict decides its label). Kinds of review, so the set has easy and hard cases:

- plain: one or two sentences of one polarity ("A gripping, beautifully shot thriller.")
- negated: the verdict comes through a negation ("Not bad at all.", "I would not call it good.")
- mixed: a complaint and a praise, with a clear overall verdict that decides the label
  ("The plot drags in the middle, but the ending more than makes up for it.")
- long: three to five sentences about several aspects, all of one polarity plus a verdict
- understated: mild wording without strong sentiment words ("I checked my watch a lot.")

Deterministic (fixed seed, stdlib only); running it again gives the same files byte for byte.
Train and test share no review text. Labels are balanced within each split and each kind.

Usage:  python data/make_reviews.py                 # writes data/reviews/train.jsonl and test.jsonl
        python data/make_reviews.py --out DIR --train 400 --test 200

Each output line: {"id": "r0001", "kind": "...", "text": "...", "label": "positive"|"negative"}
"""

import argparse
import json
import os
import random

SEED = 2024
KINDS = ("plain", "negated", "mixed", "long", "understated")

FILMS = [
    "this thriller", "the new comedy", "this drama", "the sequel", "this horror film", "the remake",
    "this documentary", "the animated feature", "this western", "the romance", "this war film",
    "the heist movie", "this musical", "the biopic", "this science fiction film", "the family film",
    "this mystery", "the indie film", "this period piece", "the superhero movie",
]
ASPECTS = {
    "acting": (
        ["the lead gives a warm, believable performance", "the cast is superb", "every actor seems to be having fun",
         "the performances are subtle and moving", "the two leads have real chemistry"],
        ["the acting is wooden", "the lead looks bored in every scene", "the cast seems lost",
         "the performances are flat and stiff", "the two leads have no chemistry at all"],
    ),
    "plot": (
        ["the story is clever and keeps you guessing", "the plot is tight and well paced", "the twists are earned",
         "the script is sharp and funny", "the story builds to a satisfying ending"],
        ["the plot makes no sense", "the story is predictable from the first minute", "the twists are silly",
         "the script is lazy and full of clichés", "the ending is a mess"],
    ),
    "visuals": (
        ["it is beautifully shot", "the photography is stunning", "the effects look great",
         "every frame is lovely to look at", "the sets are gorgeous"],
        ["it looks cheap", "the effects are laughable", "the camera work is shaky and ugly",
         "the picture is murky and dull", "the sets look like cardboard"],
    ),
    "music": (
        ["the score is lovely", "the songs are catchy", "the soundtrack fits every scene",
         "the music lifts the whole film", "the score is haunting and memorable"],
        ["the score is annoying", "the songs are forgettable", "the music is far too loud",
         "the soundtrack never fits the mood", "the score is dull and repetitive"],
    ),
    "pacing": (
        ["it never drags", "the two hours fly by", "the pacing is just right",
         "it moves briskly from start to finish", "not a minute is wasted"],
        ["it drags terribly", "the two hours feel like four", "the pacing is painfully slow",
         "it goes nowhere for an hour", "half the scenes could be cut"],
    ),
}
PLAIN = (
    ["A delight from start to finish.", "I loved it.", "One of the best films of the year.", "Wonderful.",
     "A gripping, beautifully made film.", "Great fun for the whole family.", "Highly recommended.",
     "An absolute joy.", "Brilliant and moving.", "I enjoyed every minute.", "A real treat.",
     "Smart, funny and touching.", "A triumph.", "Excellent in every way.", "Go and see it."],
    ["A waste of time.", "I hated it.", "One of the worst films of the year.", "Awful.",
     "A dull, badly made film.", "Boring for the whole family.", "Avoid it.", "A total disaster.",
     "Tedious and silly.", "I regretted every minute.", "A real chore.", "Dumb, unfunny and cold.",
     "A failure.", "Terrible in every way.", "Skip it."],
)
NEGATED = (
    ["Not bad at all.", "I was not disappointed.", "It is not perfect, but it is not far off.", "I can't fault it.",
     "Never boring for a second.", "I did not expect to enjoy it this much.", "There is nothing I would change.",
     "No complaints from me.", "It never loses its charm.", "Not a single dull moment.",
     "I couldn't stop smiling.", "You won't regret watching it."],
    ["Not good at all.", "I was not impressed.", "I would not call it good.", "I can't recommend it.",
     "Never funny, not even once.", "I did not enjoy a single scene.", "There is nothing here worth your time.",
     "No amount of effects can save it.", "It never comes to life.", "Not worth the ticket.",
     "I couldn't wait for it to end.", "You won't miss anything if you skip it."],
)
VERDICTS = (
    ["Overall, I really liked it.", "Still, a very good film.", "In the end it won me over.", "Worth seeing anyway.",
     "All in all, a great night out.", "Despite that, I would happily watch it again.", "The good far outweighs the bad."],
    ["Overall, I did not like it.", "Still, a poor film.", "In the end it lost me.", "Not worth seeing anyway.",
     "All in all, a wasted evening.", "Despite that, I would never watch it again.", "The bad far outweighs the good."],
)
UNDERSTATED = (
    ["I want to watch it again already.", "My kids asked to see it twice.", "I forgot to check my phone the whole time.",
     "The audience clapped at the end.", "I have been telling all my friends about it.", "It stayed with me for days.",
     "I bought the soundtrack on the way home.", "Time well spent."],
    ["I checked my watch a lot.", "Half the audience left early.", "I fell asleep before the end.",
     "I want those two hours back.", "I have already forgotten most of it.", "The popcorn was the best part.",
     "My friends stopped talking to me for choosing it.", "I kept looking at my phone."],
)
OPENERS = ["", "Honestly, ", "In short: ", "I saw {film} last night. ", "So, {film}. ", "Well. ", "My verdict on {film}: "]


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!")) else ".")


def aspect_line(rng: random.Random, polarity: int, exclude: set[str]) -> tuple[str, str]:
    aspect = rng.choice([a for a in ASPECTS if a not in exclude])
    return aspect, rng.choice(ASPECTS[aspect][polarity])


def review(rng: random.Random, kind: str, label: int) -> str:
    """label 0 = positive, 1 = negative (the index into each (positive, negative) pair)."""
    film = rng.choice(FILMS)
    opener = rng.choice(OPENERS).format(film=film)
    if kind == "plain":
        parts = [rng.choice(PLAIN[label])]
        if rng.random() < 0.6:
            parts.append(sentence(aspect_line(rng, label, set())[1]))
    elif kind == "negated":
        parts = [rng.choice(NEGATED[label])]
        if rng.random() < 0.4:
            parts.insert(0, sentence(aspect_line(rng, label, set())[1]))
    elif kind == "mixed":
        aspect, bad = aspect_line(rng, 1 - label, set())
        _, good = aspect_line(rng, label, {aspect})
        joiner = rng.choice([", but ", ", although ", "; on the other hand, ", ", yet "])
        parts = [sentence(bad + joiner + good), rng.choice(VERDICTS[label])]
    elif kind == "long":
        used: set[str] = set()
        parts = []
        for _ in range(rng.randint(2, 4)):
            aspect, line = aspect_line(rng, label, used)
            used.add(aspect)
            parts.append(sentence(line))
        parts.append(rng.choice(PLAIN[label] + VERDICTS[label]))
    else:
        parts = rng.sample(UNDERSTATED[label], 2 if rng.random() < 0.3 else 1)
    body = " ".join(parts)
    if opener.endswith(", ") and not body.startswith(("I ", "I'")):
        body = body[0].lower() + body[1:]  # "Honestly, the plot ..." rather than "Honestly, The plot ..."
    text = opener + body
    return text[0].upper() + text[1:]


def generate(count: int, rng: random.Random, taken: set[str]) -> list[dict[str, str]]:
    """`count` new reviews (not in `taken`), balanced over labels and kinds, shuffled."""
    rows = []
    per_cell = count // (2 * len(KINDS))
    extra = count - per_cell * 2 * len(KINDS)
    for cell, (kind, label) in enumerate((k, lab) for k in KINDS for lab in (0, 1)):
        wanted = per_cell + (1 if cell < extra else 0)
        made = 0
        for _ in range(10_000):
            if made == wanted:
                break
            text = review(rng, kind, label)
            if text in taken:
                continue
            taken.add(text)
            rows.append({"kind": kind, "text": text, "label": ("positive", "negative")[label]})
            made += 1
        if made < wanted:
            raise SystemExit(f"could not make {wanted} distinct {kind} reviews")
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "reviews"))
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(SEED)
    taken: set[str] = set()
    os.makedirs(args.out, exist_ok=True)
    number = 0
    for split, count in (("train", args.train), ("test", args.test)):
        rows = generate(count, rng, taken)
        labels = [row["label"] for row in rows]
        assert abs(labels.count("positive") - labels.count("negative")) <= 1, "labels must be balanced"
        with open(os.path.join(args.out, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                number += 1
                f.write(json.dumps({"id": f"r{number:04d}", **row}, ensure_ascii=False) + "\n")
        print(f"{split}: {len(rows)} reviews")


if __name__ == "__main__":
    main()
