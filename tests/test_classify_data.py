"""Classification text sets: seeded samples, repeated texts, named test sets (pipeline/classify/data.py)."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import REPO

from pipeline.classify.data import ClassifyDataSettings, TextSet, read_classify_data, read_text_set
from pipeline.data import text_id
from pipeline.errors import PipelineError

LABELS = ["negative", "positive"]


def write_reviews(path, texts, label="positive"):
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t in texts))
    return path


def test_a_sample_is_the_rows_with_the_smallest_seeded_hash_in_file_order(tmp_path):
    texts = [f"review number {i}" for i in range(50)]
    path = write_reviews(tmp_path / "r.jsonl", texts)
    got = read_text_set(TextSet(path=path, sample=10), LABELS, seed=3)["text"].to_list()
    ranked = sorted(texts, key=lambda t: hashlib.sha256(f"3:{text_id(t)}".encode()).hexdigest())[:10]
    assert got == [t for t in texts if t in ranked]  # the reference: rank by sha256(seed:id) directly
    assert read_text_set(TextSet(path=path, sample=10), LABELS, seed=4)["text"].to_list() != got  # another seed, another sample
    write_reviews(path, texts + [f"a later review {i}" for i in range(5)])
    grown = read_text_set(TextSet(path=path, sample=10), LABELS, seed=3)["text"].to_list()
    assert len(set(grown) & set(got)) >= 5  # adding rows keeps most of the sample (a new row enters only by out-ranking one)
    assert read_text_set(TextSet(path=path), LABELS)["text"].to_list() == texts + [f"a later review {i}" for i in range(5)]
    with pytest.raises(PipelineError, match=r"sample 56 is more than its 55 rows"):
        read_text_set(TextSet(path=path, sample=56), LABELS)


def test_repeated_texts_are_refused_or_kept_once(tmp_path, caplog):
    path = write_reviews(tmp_path / "r.jsonl", ["Great.", "Dull.", "Great.", "Fine."])
    with pytest.raises(PipelineError, match="duplicate id.*repeated_texts: keep_first keeps the first"):
        read_text_set(TextSet(path=path), LABELS)
    caplog.set_level("INFO")
    assert read_text_set(TextSet(path=path, repeated_texts="keep_first"), LABELS)["text"].to_list() == ["Great.", "Dull.", "Fine."]
    assert "kept the first of 1 repeated text" in caplog.text
    path.write_text('{"text": "Great.", "label": "positive"}\n{"text": "Great.", "label": "negative"}\n')
    with pytest.raises(PipelineError, match="1 repeated text\\(s\\) have different labels, e.g. 'Great.'"):
        read_text_set(TextSet(path=path, repeated_texts="keep_first"), LABELS)


def test_the_shipped_imdb_sentences_repeat_some_texts():
    """Why the default params read imdb.jsonl with repeated_texts: keep_first (1,000 rows in the UCI file, 997 distinct texts)."""
    imdb = REPO / "data" / "real-reviews" / "imdb.jsonl"
    with pytest.raises(PipelineError, match="duplicate id"):
        read_text_set(TextSet(path=imdb), LABELS)
    assert read_text_set(TextSet(path=imdb, repeated_texts="keep_first"), LABELS).height == 997


def test_test_sets_are_named_splits_and_a_path_alone_is_a_whole_file(tmp_path):
    train = write_reviews(tmp_path / "train.jsonl", ["Great.", "Fine."])
    other = write_reviews(tmp_path / "other.jsonl", ["Dull."], "negative")
    settings = ClassifyDataSettings.from_section({"train": str(train), "tests": {"other": {"path": str(other)}, "again": str(other)}}, "classify.data")
    assert settings.train == TextSet(path=train) and settings.tests["again"] == TextSet(path=other)
    data = read_classify_data(settings, LABELS)
    assert list(data) == ["train", "other", "again"] and data["other"]["label"].to_list() == [0]
    for name in ("train", "Bad-Name", "1st"):
        with pytest.raises(PipelineError, match=f"classify.data.tests: .*test set name '{name}' must be"):
            ClassifyDataSettings.from_section({"train": str(train), "tests": {name: str(other)}}, "classify.data")
    with pytest.raises(PipelineError, match="classify.data.train.sample"):
        ClassifyDataSettings.from_section({"train": {"path": str(train), "sample": 0}}, "classify.data")
