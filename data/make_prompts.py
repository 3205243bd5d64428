#!/usr/bin/env python3
"""Generate the project's default instruction-prompt set (data/prompts.jsonl).

Written for this project. Prompts are built from hand-written templates and
hand-written slot lists; every slot list is paired only with templates it reads
naturally in. Output is deterministic (fixed seed, stdlib only).

Usage:  python data/make_prompts.py            # writes data/prompts.jsonl
        python data/make_prompts.py --out PATH

Each output line: {"id": "p0001", "category": "...", "prompt": "..."}
ids run p0001..p0240 in generation order.
"""

import argparse
import json
import os
import random

SEED = 1234
PER_CATEGORY = 15          # 16 categories x 15 = 240 prompts
MIN_WORDS, MAX_WORDS = 5, 40


# --------------------------------------------------------------------------
# Slot lists and templates, one block per category.
# Each "slot" category uses every slot item at most once, so no subject repeats.
# --------------------------------------------------------------------------

SCIENCE_FACTS = [
    "the sky is blue", "ice floats on water", "we have seasons",
    "leaves change colour in autumn", "metal feels colder than wood",
    "bread rises when it is baked", "we see lightning before we hear thunder",
    "the Moon changes shape during the month", "salt melts ice on roads",
    "a rainbow appears after rain", "our ears pop on an aeroplane",
    "plants need sunlight", "a spoon looks bent in a glass of water",
    "boats float", "we sweat when we are hot", "the ocean is salty",
    "onions make people cry", "a balloon sticks to a wall after you rub it on your hair",
]
SCIENCE_TEMPLATES = [
    "Can you explain why {x}?",
    "In simple words, explain why {x}.",
    "Briefly explain to a ten-year-old why {x}.",
    "Give a short scientific explanation of why {x}.",
    "What is the reason that {x}? Keep the answer short.",
]

DEFINITION_TERMS = [
    "photosynthesis", "gravity", "a volcano", "an atom", "democracy",
    "inflation", "a noun", "a habitat", "evaporation", "a mammal",
    "an ecosystem", "friction", "a budget", "a metaphor", "a vaccine",
    "a glacier", "an algorithm", "erosion",
]
DEFINITION_TEMPLATES = [
    "Define {x} in one sentence.",
    "What is {x}? Answer briefly.",
    "Give a simple definition of {x}.",
    "Explain what {x} is in plain English.",
    "What does the term \"{bare}\" mean?",
]

FORMAL_SENTENCES = [
    "Hey, can you send me that report thing by tomorrow?",
    "We gotta fix this bug before the boss sees it.",
    "Sorry, I can't make it to the meeting, something came up.",
    "The new phone is super cool and way faster than the old one.",
    "Thanks a lot for helping me out with the move.",
    "I think the plan is kind of a mess right now.",
    "Can you tell me what's going on with my order?",
    "The food was okay but the waiter was really slow.",
    "Let's grab lunch and talk about the project.",
    "I'm gonna be a bit late, traffic is crazy.",
    "This app keeps crashing and it's driving me nuts.",
    "Just checking if you got my last email.",
    "We need way more people to finish this on time.",
    "The price went up a ton since last year.",
    "No worries, we can sort it out next week.",
    "Your idea is pretty good, but it needs more work.",
]
FORMAL_TEMPLATES = [
    "Rewrite this sentence more formally: \"{x}\"",
    "Make this sentence sound more professional: \"{x}\"",
    "Rewrite the following in a formal tone: \"{x}\"",
    "Turn this casual sentence into formal English: \"{x}\"",
]

PASSAGES = [
    "Bees visit flowers to collect nectar. While they do this, pollen sticks "
    "to their bodies and is carried to other flowers. This helps plants make seeds.",
    "The town library opened a new reading room last month. It has comfortable "
    "chairs and large windows. Many students now study there after school.",
    "Regular exercise strengthens the heart and muscles. It can also improve "
    "mood and sleep. Experts suggest about thirty minutes of activity most days.",
    "The Great Wall of China was built over many centuries. It stretches for "
    "thousands of kilometres. Today it is one of the most visited places in the world.",
    "Maria planted tomatoes in spring. She watered them every evening. By "
    "late summer, she had more tomatoes than her family could eat.",
    "Recycling paper saves trees and energy. Used paper is soaked, cleaned and "
    "pressed into new sheets. Many cities collect paper separately for this reason.",
    "A heavy storm hit the coast on Sunday night. Strong winds knocked down "
    "trees and power lines. Repair crews worked all Monday to restore electricity.",
    "Octopuses are very clever animals. They can solve puzzles and open jars. "
    "Some have even escaped from their tanks in aquariums.",
    "The bakery on Main Street starts work at four in the morning. The bakers "
    "make bread, rolls and cakes. By seven, customers are already waiting outside.",
    "Drinking enough water is important for health. Water helps control body "
    "temperature and carries nutrients. Thirst is often the first sign you need more.",
    "The school held its first science fair this year. Students built "
    "volcanoes, robots and solar ovens. The winning project measured air quality in classrooms.",
    "Walking in nature can reduce stress. Trees, fresh air and quiet sounds "
    "help people relax. Even a short walk in a park can lift your mood.",
    "Solar panels turn sunlight into electricity. They work best on clear, "
    "sunny days. Many homes now use them to lower their energy bills.",
    "Tom forgot his umbrella on a rainy morning. He arrived at work soaked. "
    "Since then, he keeps a spare umbrella in his desk drawer.",
    "Penguins cannot fly, but they are excellent swimmers. Their wings work "
    "like flippers in the water. They dive deep to catch fish and squid.",
    "The city added new bike lanes last year. More people now cycle to work. "
    "Traffic in the city centre has become a little lighter.",
]
SUMMARY_TEMPLATES = [
    "Summarise this passage in one sentence: {x}",
    "Give a one-sentence summary of the following text. {x}",
    "What is the main idea of this passage? {x}",
    "Summarise in a few words: {x}",
]

LIST_SUBJECTS = [
    "fruits that are high in vitamin C", "planets in our solar system",
    "ways to save water at home", "musical instruments with strings",
    "animals that live in the Arctic", "sources of renewable energy",
    "vegetables that grow underground", "things to pack for a beach trip",
    "colours of the rainbow", "healthy breakfast ideas",
    "board games for a family evening", "sports played with a ball",
    "tools found in a kitchen", "birds that cannot fly",
    "ways to reduce plastic waste", "countries in South America",
    "indoor hobbies for a rainy day", "parts of a flower",
]
LIST_TEMPLATES = [
    "List three {x}.",
    "Name five {x}.",
    "Give me a short list of {x}.",
    "What are four {x}?",
    "Write a bullet list of three {x}.",
]

ADVICE_GOALS = [
    "sleep better", "study for an exam", "save money each month",
    "stay focused while working from home", "make new friends in a new city",
    "drink more water during the day", "prepare for a job interview",
    "keep my houseplants alive", "start running as a beginner",
    "reduce stress before a big event", "learn a new language",
    "organise my desk", "spend less time on my phone",
    "cook healthier meals on a budget", "get up earlier in the morning",
    "remember people's names", "keep a tidy kitchen",
]
ADVICE_TEMPLATES = [
    "Give me three tips to {x}.",
    "How can I {x}? Give short advice.",
    "What is one good way to {x}?",
    "I want to {x}. What should I do first?",
    "Suggest a simple plan to help me {x}.",
]

TRANSLATE_PHRASES = [
    "Good morning", "Thank you very much", "Where is the train station?",
    "I am hungry", "How much does this cost?", "See you tomorrow",
    "What is your name?", "I would like a coffee, please",
    "The weather is nice today", "Happy birthday", "Excuse me",
    "I do not understand", "Where is the bathroom?", "Have a nice day",
    "My name is Anna", "Can you help me?", "Good night",
]
TRANSLATE_LANGUAGES = ["French", "Spanish"]
TRANSLATE_TEMPLATES = [
    "Translate \"{x}\" into {lang}.",
    "How do you say \"{x}\" in {lang}?",
    "Translate this English phrase to {lang}: \"{x}\"",
    "What is \"{x}\" in {lang}?",
]

POEM_TOPICS = [
    "the ocean", "autumn leaves", "a rainy day", "the first snow",
    "a cup of morning coffee", "the night sky", "an old tree",
    "a quiet library",
]
POEM_TEMPLATES = [
    "Write a one-line poem about {x}.",
    "Write a short rhyming couplet about {x}.",
    "Write a haiku about {x}.",
]
SLOGAN_SUBJECTS = [
    "a neighbourhood bakery", "a recycling campaign", "a bicycle repair shop",
    "a public library", "a lemonade stand", "a fitness club",
    "a campaign to save water", "an eco-friendly water bottle",
]
SLOGAN_TEMPLATES = [
    "Write a catchy slogan for {x}.",
    "Suggest a short slogan for {x}.",
    "Write a one-line advertising slogan for {x}.",
]

COMPARE_PAIRS = [
    ("cats", "dogs as pets"), ("tea", "coffee"), ("weather", "climate"),
    ("a frog", "a toad"), ("a virus", "a bacterium"), ("the Sun", "the Moon"),
    ("rain", "snow"), ("a laptop", "a desktop computer"),
    ("walking", "cycling to work"), ("a city", "a village"),
    ("reading a book", "watching a film"), ("an ocean", "a lake"),
    ("a comet", "an asteroid"), ("trains", "aeroplanes for travel"),
    ("a violin", "a cello"), ("summer", "winter"), ("a crocodile", "an alligator"),
]
COMPARE_TEMPLATES = [
    "Compare {a} and {b} in two sentences.",
    "What is the difference between {a} and {b}?",
    "Name one similarity and one difference between {a} and {b}.",
    "Briefly compare {a} and {b}.",
]

STORY_OPENINGS = [
    "The old lighthouse had been dark for years, until one stormy night its lamp flickered on.",
    "When Mia opened the attic door, she found a map with her name on it.",
    "The robot woke up in an empty city and heard a dog barking in the distance.",
    "Every morning, a small blue bird tapped on Sam's kitchen window.",
    "The train stopped in the middle of a snowy forest, and the lights went out.",
    "Grandpa handed me a key and said, \"Don't open the box until you are ready.\"",
    "On the first day at her new school, Lena found a note inside her desk.",
    "The fisherman pulled up his net and saw something glowing inside it.",
    "Nobody in the village had ever crossed the river, until a stranger arrived.",
    "The phone rang at midnight, but the caller only whispered one word.",
    "Leo's kite flew higher than ever, then the string suddenly snapped.",
    "The museum guard noticed that one painting had changed overnight.",
    "A letter arrived at the farm, addressed to someone who had lived there a hundred years ago.",
    "The spaceship landed softly in the garden while everyone was asleep.",
    "Ava's little brother said the cat could talk, and tonight she believed him.",
    "The baker found flour footprints leading out of the kitchen door.",
]
STORY_TEMPLATES = [
    "Continue this story in two or three sentences: {x}",
    "Complete this story opening: {x}",
    "Write what happens next: {x}",
    "Finish this short story in a few sentences: {x}",
]

CODING_TASKS = [
    "returns the largest number in a list",
    "checks whether a string is a palindrome",
    "counts the vowels in a string",
    "reverses a list without using reverse()",
    "returns the factorial of a number",
    "converts Celsius to Fahrenheit",
    "checks whether a number is prime",
    "returns the sum of all even numbers in a list",
    "removes duplicate items from a list",
    "counts how many times each word appears in a sentence",
    "returns the average of a list of numbers",
    "checks whether a year is a leap year",
    "returns the first n Fibonacci numbers",
    "capitalises the first letter of every word in a string",
    "finds the longest word in a sentence",
    "merges two sorted lists into one sorted list",
    "returns the number of digits in an integer",
]
CODING_TEMPLATES = [
    "Write a Python function that {x}.",
    "Write a short Python function that {x}.",
    "In Python, how would you write a function that {x}?",
    "Show a simple Python function that {x}, with one example call.",
]

GRAMMAR_SENTENCES = [
    "She don't like apples.", "Me and him went to the park yesterday.",
    "There is three cats in the garden.", "I has finished my homework.",
    "He go to school every day.", "They was very happy with the results.",
    "We didn't saw anything strange.", "The children is playing outside.",
    "I seen that film last week.", "Their going to the beach tomorrow.",
    "She can sings very well.", "He runned to the shop.",
    "Your the best teacher I have ever had.", "The dog wagged it's tail.",
    "I am agree with you.", "Yesterday I eat a sandwich for lunch.",
]
GRAMMAR_TEMPLATES = [
    "Correct the grammar in this sentence: \"{x}\"",
    "Fix the mistake in this sentence: \"{x}\"",
    "Rewrite this sentence with correct grammar: \"{x}\"",
    "Find and correct the error: \"{x}\"",
]

HOWTO_TASKS = [
    "make a cup of tea", "plant a seed in a pot", "tie a shoelace",
    "boil an egg", "wash your hands properly", "make a paper aeroplane",
    "change a bicycle tyre", "make a simple sandwich", "set up a new email account",
    "fold a T-shirt neatly", "brew coffee with a French press",
    "clean a computer keyboard", "make pancakes", "wrap a present",
    "back up photos from a phone", "write a thank-you note",
]
HOWTO_TEMPLATES = [
    "Describe how to {x} in a few simple steps.",
    "What are the steps to {x}?",
    "Explain how to {x}.",
    "Give step-by-step instructions to {x}.",
]

VOCAB_WORDS = [
    "happy", "fast", "cold", "bright", "quiet", "strong", "easy", "ancient",
    "brave", "tiny", "generous", "polite", "difficult", "careful", "honest",
    "noisy", "clever",
]
VOCAB_TEMPLATES = [
    "Give a synonym for the word \"{x}\".",
    "What is the opposite of the word \"{x}\"?",
    "Use the word \"{x}\" in a simple sentence.",
    "Give two words that mean almost the same as \"{x}\".",
]

COUNTRIES = [
    "France", "Japan", "Brazil", "Canada", "Egypt", "Australia", "Italy",
    "India", "Kenya", "Mexico", "Norway", "Spain", "Germany", "Argentina",
    "Thailand", "Greece",
]
GEO_TEMPLATES = [
    "What is the capital of {x}?",
    "On which continent is {x}?",
    "Name a famous landmark in {x}.",
    "Which languages are spoken in {x}?",
    "Describe the climate of {x} in one or two sentences.",
]

ANIMALS_FACTS = [
    "elephants", "dolphins", "owls", "honeybees", "penguins", "camels",
    "octopuses", "bats", "kangaroos", "ants", "sea turtles", "giraffes",
    "wolves", "butterflies", "polar bears", "hummingbirds",
]
ANIMAL_TEMPLATES = [
    "Tell me two interesting facts about {x}.",
    "Where do {x} usually live?",
    "What do {x} eat in the wild?",
    "Describe {x} in three short sentences.",
    "What makes {x} special among animals?",
]


# --------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------

def _bare(term):
    """'a volcano' -> 'volcano' (for the quoted-term definition template)."""
    for art in ("a ", "an "):
        if term.startswith(art):
            return term[len(art):]
    return term


def from_slots(rng, items, templates, render):
    """Pick PER_CATEGORY distinct items, give each a random template."""
    chosen = rng.sample(items, PER_CATEGORY)
    return [render(rng.choice(templates), item) for item in chosen]


def gen_arithmetic(rng):
    names = ["Tom", "Aisha", "Lucas", "Mei", "Omar", "Sofia", "Ben", "Priya",
             "Jonas", "Chloe", "Diego", "Nora"]
    items = ["apples", "pencils", "stickers", "marbles", "books", "cookies",
             "stamps", "balloons"]

    def add(n, it):
        a, b = rng.randint(3, 20), rng.randint(2, 15)
        return f"{n} has {a} {it} and gets {b} more. How many {it} does {n} have now?"

    def sub(n, it):
        a = rng.randint(12, 40); b = rng.randint(2, a - 3)
        return f"{n} had {a} {it} and gave {b} to a friend. How many {it} are left?"

    def mul(n, it):
        a, b = rng.randint(3, 12), rng.randint(2, 9)
        return f"A box holds {a} {it}. How many {it} are in {b} boxes?"

    def div(n, it):
        b, q = rng.randint(2, 6), rng.randint(2, 9)
        return (f"{n} shares {b * q} {it} equally among {b} friends. "
                f"How many {it} does each friend get?")

    def money(n, it):
        price, qty = rng.randint(2, 9), rng.randint(2, 6)
        return (f"A notebook costs {price} dollars. {n} buys {qty} notebooks. "
                f"How much does {n} spend in total?")

    def change(n, it):
        cost = rng.randint(3, 17)
        return f"{n} pays for a {cost}-dollar lunch with a 20-dollar note. How much change does {n} get?"

    def time_(n, it):
        start, dur = rng.randint(1, 8), rng.randint(2, 4)
        return (f"A film starts at {start} o'clock and lasts {dur} hours. "
                f"At what time does it end?")

    def speed(n, it):
        v, h = rng.choice([40, 50, 60, 80]), rng.randint(2, 5)
        return f"A car travels at {v} kilometres per hour for {h} hours. How far does it go?"

    def two_step(n, it):
        a, b, c = rng.randint(5, 15), rng.randint(3, 10), rng.randint(1, 4)
        return (f"{n} collects {a} shells on the beach in the morning and {b} in "
                f"the afternoon, then gives {c} to a friend. How many shells does "
                f"{n} have now? Show your working.")

    makers = [add, sub, mul, div, money, change, time_, speed, two_step]
    out, seen = [], set()
    rng.shuffle(makers)
    i = 0
    while len(out) < PER_CATEGORY:
        make = makers[i % len(makers)]
        i += 1
        p = make(rng.choice(names), rng.choice(items))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def gen_poem_slogan(rng):
    pool = [("poem", t) for t in POEM_TOPICS] + [("slogan", s) for s in SLOGAN_SUBJECTS]
    chosen = rng.sample(pool, PER_CATEGORY)
    return [rng.choice(POEM_TEMPLATES if kind == "poem" else SLOGAN_TEMPLATES).format(x=x)
            for kind, x in chosen]


def gen_translation(rng):
    chosen = rng.sample(TRANSLATE_PHRASES, PER_CATEGORY)
    # alternate languages so both appear evenly, order randomised
    langs = (TRANSLATE_LANGUAGES * PER_CATEGORY)[:PER_CATEGORY]
    rng.shuffle(langs)
    return [rng.choice(TRANSLATE_TEMPLATES).format(x=x, lang=lang)
            for x, lang in zip(chosen, langs)]


def gen_general_knowledge(rng):
    pool = ([(GEO_TEMPLATES, c) for c in COUNTRIES]
            + [(ANIMAL_TEMPLATES, a) for a in ANIMALS_FACTS])
    chosen = rng.sample(pool, PER_CATEGORY)
    return [rng.choice(templates).format(x=x) for templates, x in chosen]


def fmt_x(t, x):
    return t.format(x=x)


CATEGORIES = [
    ("science_explanation",
     lambda r: from_slots(r, SCIENCE_FACTS, SCIENCE_TEMPLATES, fmt_x)),
    ("definition",
     lambda r: from_slots(r, DEFINITION_TERMS, DEFINITION_TEMPLATES,
                          lambda t, x: t.format(x=x, bare=_bare(x)))),
    ("arithmetic_word_problem", gen_arithmetic),
    ("formal_rewrite",
     lambda r: from_slots(r, FORMAL_SENTENCES, FORMAL_TEMPLATES, fmt_x)),
    ("summarisation",
     lambda r: from_slots(r, PASSAGES, SUMMARY_TEMPLATES, fmt_x)),
    ("listing",
     lambda r: from_slots(r, LIST_SUBJECTS, LIST_TEMPLATES, fmt_x)),
    ("advice",
     lambda r: from_slots(r, ADVICE_GOALS, ADVICE_TEMPLATES, fmt_x)),
    ("translation", gen_translation),
    ("poem_or_slogan", gen_poem_slogan),
    ("comparison",
     lambda r: from_slots(r, COMPARE_PAIRS, COMPARE_TEMPLATES,
                          lambda t, p: t.format(a=p[0], b=p[1]))),
    ("story_completion",
     lambda r: from_slots(r, STORY_OPENINGS, STORY_TEMPLATES, fmt_x)),
    ("coding",
     lambda r: from_slots(r, CODING_TASKS, CODING_TEMPLATES, fmt_x)),
    ("grammar_correction",
     lambda r: from_slots(r, GRAMMAR_SENTENCES, GRAMMAR_TEMPLATES, fmt_x)),
    ("how_to",
     lambda r: from_slots(r, HOWTO_TASKS, HOWTO_TEMPLATES, fmt_x)),
    ("vocabulary",
     lambda r: from_slots(r, VOCAB_WORDS, VOCAB_TEMPLATES, fmt_x)),
    ("general_knowledge", gen_general_knowledge),
]


def build(seed=SEED):
    rng = random.Random(seed)
    rows = []
    for cat, gen in CATEGORIES:
        for prompt in gen(rng):
            rows.append({"category": cat, "prompt": prompt})
    # Mix categories so any prefix of the file covers many kinds of prompt.
    rng.shuffle(rows)
    out = [{"id": f"p{i:04d}", "category": r["category"], "prompt": r["prompt"]}
           for i, r in enumerate(rows, start=1)]

    # Sanity checks.
    prompts = [r["prompt"] for r in out]
    assert len(out) == PER_CATEGORY * len(CATEGORIES) == 240, len(out)
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    for r in out:
        n = len(r["prompt"].split())
        assert MIN_WORDS <= n <= MAX_WORDS, (r, n)
        assert "{" not in r["prompt"] and "}" not in r["prompt"], r
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "prompts.jsonl"))
    args = ap.parse_args()
    rows = build()
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} prompts to {args.out}")


if __name__ == "__main__":
    main()
