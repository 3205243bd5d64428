"""Tang et al. (2019) data augmentation for distillation: new unlabelled texts made from the transfer set.

"Distilling Task-Specific Knowledge from BERT into Simple Neural Networks", section 3.3: each word is
masked with probability `mask`, else replaced by a random word of the same part of speech with
probability `substitute`; then, with probability `ngram`, only a random n-gram of the result is kept
(n uniform in 1..5). Repeated `copies` times per text; repeats and texts equal to an original are
dropped. The teacher labels the new texts like any others: they carry no gold label.

Words are whitespace-separated; a word's punctuation stays around a substituted word. The part of
speech of a word is the first (most frequent) tag a lexicon gives it, e.g. Eric Brill's lexicon
(`lexicon.js` of the npm package `pos`, see docs/classification.md); words the lexicon lacks are
never substituted.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.settings import Positive, Settings

CORE = re.compile(r"^(\W*)(.*?)(\W*)$")  # leading punctuation, the word, trailing punctuation


class AugmentSettings(Settings):
    """How augmented texts are made (Tang et al.'s defaults: 0.1, 0.1, 0.25 and 20 copies)."""

    copies: Positive = 20  # augmentation passes over each text
    mask: float = Field(0.1, ge=0, le=1)  # a word becomes mask_token
    substitute: float = Field(0.1, ge=0, le=1)  # a word becomes a random corpus word of the same part of speech
    ngram: float = Field(0.25, ge=0, le=1)  # the result is cut to a random n-gram, n in 1..5
    mask_token: str = "[MASK]"
    seed: int = 0


def read_lexicon(path: Path) -> dict[str, str]:
    """{word: its first part-of-speech tag} from a JSON object of word -> tags, or the `lexicon.js` of npm `pos` (the same object after `module.exports =`)."""
    text = Path(path).read_text()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise PipelineError(f"{path}: no JSON object of word -> part-of-speech tags")
    try:
        entries = json.loads(text[start : end + 1].replace("\\'", "'"))  # the .js file escapes single quotes, which JSON does not allow
    except json.JSONDecodeError as error:
        raise PipelineError(f"{path}: not a JSON object of word -> part-of-speech tags ({error.msg} at line {error.lineno})") from None
    return {word: tags[0] for word, tags in entries.items() if isinstance(tags, list) and tags}


def word_classes(texts: Sequence[str], lexicon: dict[str, str]) -> dict[str, list[str]]:
    """Part-of-speech tag -> the distinct corpus words of that tag (sorted: the same lists on every run)."""
    classes: dict[str, set[str]] = {}
    for text in texts:
        for word in text.split():
            core = CORE.match(word).group(2)
            tag = tag_of(core, lexicon)
            if tag is not None:
                classes.setdefault(tag, set()).add(core)
    return {tag: sorted(words) for tag, words in classes.items()}


def tag_of(word: str, lexicon: dict[str, str]) -> str | None:
    return lexicon.get(word) or lexicon.get(word.lower())


def augment_text(text: str, rng: random.Random, settings: AugmentSettings, lexicon: dict[str, str], classes: dict[str, list[str]]) -> str:
    """One augmented version of `text` (Tang et al.'s procedure, one pass)."""
    words = []
    for word in text.split():
        draw = rng.random()
        lead, core, trail = CORE.match(word).groups()
        if draw < settings.mask and core:
            words.append(lead + settings.mask_token + trail)
        elif draw < settings.mask + settings.substitute and core and (tag := tag_of(core, lexicon)) in classes:
            words.append(lead + rng.choice(classes[tag]) + trail)
        else:
            words.append(word)
    if rng.random() < settings.ngram and words:
        n = rng.randint(1, 5)
        start = rng.randrange(max(1, len(words) - n + 1))
        words = words[start : start + n]
    return " ".join(words)


def augment_texts(texts: Sequence[str], settings: AugmentSettings, lexicon: dict[str, str] | None = None) -> list[str]:
    """Every new text of `copies` passes over `texts`, in order of first appearance, without repeats or originals.

    Without a lexicon nothing is substituted (masking and n-grams only).
    """
    if settings.mask + settings.substitute > 1:
        raise PipelineError(f"augment mask + substitute must be at most 1 (each word is masked, substituted or kept), got {settings.mask} + {settings.substitute}")
    lexicon = lexicon or {}
    classes = word_classes(texts, lexicon)
    rng = random.Random(settings.seed)
    seen = set(texts)
    out = []
    for text in texts:
        for _ in range(settings.copies):
            new = augment_text(text, rng, settings, lexicon, classes)
            if new.strip() and new not in seen:
                seen.add(new)
                out.append(new)
    return out
