"""Transfer-set texts beyond the given ones: Tang et al.'s augmentation (pipeline/classify/augment.py)
and the teacher's own answers as texts (pipeline/classify/generated.py)."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_settings

from pipeline.classify.augment import AugmentSettings, augment_texts, read_lexicon
from pipeline.classify.generated import answers_as_texts, clean_answer
from pipeline.errors import PipelineError

TEXTS = ["The acting is superb, and the music soars.", "A dull, lifeless plot with wooden acting.", "I loved every minute of it!"]
LEXICON = {"acting": "NN", "music": "NN", "plot": "NN", "minute": "NN", "superb": "JJ", "dull": "JJ", "lifeless": "JJ", "wooden": "JJ", "loved": "VBD", "soars": "VBZ"}


def test_augmentation_is_seeded_and_never_repeats_a_text_or_an_original():
    settings = AugmentSettings(copies=20, seed=7)
    first = augment_texts(TEXTS, settings, LEXICON)
    assert first == augment_texts(TEXTS, settings, LEXICON)  # the same seed, the same texts
    assert first != augment_texts(TEXTS, settings.model_copy(update={"seed": 8}), LEXICON)
    assert len(first) == len(set(first)) and not set(first) & set(TEXTS) and all(t.strip() for t in first)


def test_masking_keeps_punctuation_around_the_mask():
    out = augment_texts(["Great, fun film!"], AugmentSettings(copies=1, mask=1.0, substitute=0.0, ngram=0.0))
    assert out == ["[MASK], [MASK] [MASK]!"]


def test_substitution_draws_a_corpus_word_of_the_same_part_of_speech():
    out = augment_texts(TEXTS, AugmentSettings(copies=10, mask=0.0, substitute=1.0, ngram=0.0), LEXICON)
    nouns, adjectives = {"acting", "music", "plot", "minute"}, {"superb", "dull", "lifeless", "wooden"}
    for text in out:
        for original, new in zip(next(t for t in TEXTS if len(t.split()) == len(text.split()) and _same_shape(t, text)).split(), text.split()):
            core_old, core_new = original.strip(",.!"), new.strip(",.!")
            if core_old in nouns:
                assert core_new in nouns
            elif core_old in adjectives:
                assert core_new in adjectives
            elif core_old not in LEXICON:
                assert core_new == core_old  # a word the lexicon lacks is never substituted
    assert augment_texts(TEXTS, AugmentSettings(copies=5, mask=0.0, substitute=1.0, ngram=0.0)) == []  # no lexicon: nothing changes, nothing new


def _same_shape(a: str, b: str) -> bool:
    """Same words where the lexicon has no tag (the words substitution cannot touch)."""
    return all(x == y for x, y in zip(a.split(), b.split()) if x.strip(",.!") not in LEXICON)


def test_ngram_sampling_keeps_one_to_five_consecutive_words():
    out = augment_texts(TEXTS, AugmentSettings(copies=30, mask=0.0, substitute=0.0, ngram=1.0))
    assert out
    for text in out:
        words = text.split()
        assert 1 <= len(words) <= 5
        assert any(words == t.split()[i : i + len(words)] for t in TEXTS for i in range(len(t.split())))


def test_bad_settings_and_lexicons_are_refused(tmp_path):
    with pytest.raises(PipelineError, match="mask \\+ substitute must be at most 1"):
        augment_texts(TEXTS, AugmentSettings(mask=0.6, substitute=0.6))
    js = tmp_path / "lexicon.js"
    js.write_text('/* Brill */\nmodule.exports = {\n    "\\\'s": ["POS"],\n    "fawn": ["NN", "VB"]\n};\n')
    assert read_lexicon(js) == {"'s": "POS", "fawn": "NN"}
    js.write_text("module.exports = [];")
    with pytest.raises(PipelineError, match="no JSON object"):
        read_lexicon(js)


@pytest.mark.parametrize(
    "answer, text",
    [
        ('"A triumph of style."', "A triumph of style."),
        ("Here is a review:\n\nDull and far too long.", "Dull and far too long."),
        ("  Loved it.\nSecond paragraph.", "Loved it."),
        ("Short  and\tsweet", "Short and sweet"),
    ],
)
def test_clean_answer(answer, text):
    assert clean_answer(answer) == text


ANSWERS = ['"A triumph of style."', "Here is a review:\n\nDull and far too long.", "A triumph of style.", "Meh.", "The cast shines throughout."]


@pytest.fixture(scope="module")
def answers_cache(tmp_path_factory, tiny_teacher):
    """A language-model cache whose answers are known: the teacher stage scoring given responses (an evaluation-only prompt set, as the generated-text recipe makes)."""
    import polars as pl

    from pipeline.data import read_prompts, split_prompts, write_splits
    from pipeline.lm.teacher import run_teacher
    from pipeline.teacher_model import resolve_teacher

    root = tmp_path_factory.mktemp("answers")
    pl.DataFrame({"prompt": [f"Write review {i}." for i in range(len(ANSWERS))], "response": ANSWERS}).write_csv(root / "pairs.csv")
    write_splits(split_prompts(read_prompts(root / "pairs.csv"), 1.0, 0), root / "prepared")
    run_teacher(root / "prepared", resolve_teacher(str(tiny_teacher), tiny_teacher), root / "cache", tiny_settings())
    return root / "cache"


def test_answers_of_a_language_model_cache_become_texts(answers_cache):
    from pipeline.data import text_id

    rows = answers_as_texts(answers_cache, "validation", min_words=3)
    by_prompt = {text_id(f"Write review {i}."): answer for i, answer in enumerate(ANSWERS)}  # kd prepare's ids: a hash of the prompt
    assert sorted(r["text"] for r in rows) == sorted(["A triumph of style.", "Dull and far too long.", "The cast shines throughout."])  # cleaned, the repeat and "Meh." dropped
    assert all(clean_answer(by_prompt[r["prompt_id"]]) == r["text"] for r in rows)
    with pytest.raises(PipelineError, match="no answer of 1000 words or more"):
        answers_as_texts(answers_cache, "validation", min_words=1000)


def test_cli_augment_and_answers_write_jsonl(answers_cache, tiny_teacher, tmp_path):
    from test_classify import invoke

    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": t, "label": "positive"}) + "\n" for t in TEXTS))
    lexicon = tmp_path / "lexicon.json"
    lexicon.write_text(json.dumps({word: [tag] for word, tag in LEXICON.items()}))
    invoke(["classify", "augment", "--texts", str(source), "--out", str(tmp_path / "aug.jsonl"), "--lexicon", str(lexicon), "--copies", "4"])
    written = [json.loads(line)["text"] for line in (tmp_path / "aug.jsonl").read_text().splitlines()]
    assert written == augment_texts(TEXTS, AugmentSettings(copies=4), read_lexicon(lexicon))
    invoke(["classify", "answers", str(answers_cache), "--out", str(tmp_path / "answers.jsonl")])
    assert [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()] == answers_as_texts(answers_cache, "validation")
    with pytest.raises(PipelineError, match="needs 'causal_lm_topk'.*review-writing prompts"):
        answers_as_texts(classify_cache_of(tmp_path, source, tiny_teacher), "train")


def classify_cache_of(tmp_path, texts, teacher):
    from test_classify import invoke

    invoke(["classify", "teacher", "--train", str(texts), "--model", str(teacher), "--out", str(tmp_path / "classify-cache")])
    return tmp_path / "classify-cache"


def test_the_shipped_review_prompts_are_the_scripts_seeded_output():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("make_review_prompts", REPO / "data" / "make_review_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.review_prompts(400, 0)
    assert (REPO / "data" / "review-prompts.jsonl").read_text() == "".join(json.dumps(row) + "\n" for row in rows)
    assert len({row["prompt"] for row in rows}) == 400 and module.review_prompts(400, 1) != rows
    assert all(" a a" not in row["prompt"] and " a e" not in row["prompt"] for row in rows)  # articles agree
