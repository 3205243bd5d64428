"""The cache's storage as a typed value: what the encoding block says, parsed back, and the rules that follow from it."""

import json
from pathlib import Path
from typing import get_args

import pytest

from pipeline.cache.codec import CacheEncoding
from pipeline.cache.format import FORMAT_VERSION, HYBRID_FORMAT_VERSION, MANIFEST_FILE
from pipeline.cache.manifest import Manifest
from pipeline.cache.schema import Hybrid, Sampled, TopK, check_cross_tokenizer, check_student, encoding_of, storage_for, storage_of
from pipeline.errors import PipelineError
from pipeline.lm.losses import Divergence
from pipeline.lm.teacher import TeacherSettings

VOCAB = 49_152
TAILS = ("bucket", "renormalize")


@pytest.mark.parametrize(("k", "draws", "head", "expected"), [(20, None, 0, TopK(20)), (20, 32, 0, Sampled(32)), (20, 32, 4, Hybrid(32, 4))])
def test_teacher_settings_choose_the_storage_and_the_block_parses_back_to_it(k, draws, head, expected):
    storage = TeacherSettings(k=k, draws=draws, head=head).storage
    assert storage == storage_for(k, draws, head) == expected
    block = CacheEncoding().block(VOCAB, storage)
    written = block.document()  # what the manifest lists
    assert written["storage"] == storage.name and storage_of(encoding_of({"encoding": written}), k) == storage
    assert (written.get("draws"), written.get("head", 0)) == (draws, head)
    assert ("count_bytes" in written) == (draws is not None) and written["drop_zero_level"] == (draws is None)


def test_ids_per_position_and_format_versions():
    # the most ids a position lists, counted directly: k; one per draw; the head plus one per draw from the rest
    assert TopK(20).most_ids(VOCAB) == 20
    assert Sampled(64).most_ids(VOCAB) == 64 and Sampled(64).most_ids(40) == 40
    assert Hybrid(64, 8).most_ids(VOCAB) == 72 and Hybrid(64, 8).most_ids(40) == 8 + (40 - 8)
    assert CacheEncoding().block(VOCAB, Hybrid(300, 4)).entry_bytes == 2 and CacheEncoding().block(VOCAB, TopK(20)).entry_bytes == 1
    assert (TopK(20).format_version, Sampled(8).format_version, Hybrid(8, 2).format_version) == (FORMAT_VERSION, FORMAT_VERSION, HYBRID_FORMAT_VERSION)


def test_drawn_storages_allow_forward_kl_with_the_bucket_only():
    for divergence in get_args(Divergence):
        for tail in TAILS:
            assert TopK(20).student_problem(divergence, tail) is None
            for drawn in (Sampled(8), Hybrid(8, 2)):
                allowed = drawn.student_problem(divergence, tail) is None
                assert allowed == (divergence == "forward_kl" and tail == "bucket")
    with pytest.raises(PipelineError, match=r"^c is a hybrid cache: it supports student.loss forward_kl only .* not 'jsd'$"):
        check_student(Hybrid(8, 2), Path("c"), "jsd", "bucket")
    check_student(TopK(5), Path("c"), "jsd", "renormalize")


def test_only_top_k_caches_train_across_tokenizers():
    check_cross_tokenizer(TopK(20), Path("c"))
    for drawn in (Sampled(8), Hybrid(8, 2)):
        with pytest.raises(PipelineError, match=f"c is a {drawn.name} cache: cross-tokenizer distillation needs a top-k cache"):
            check_cross_tokenizer(drawn, Path("c"))


def test_float32_and_unknown_blocks():
    assert storage_of(CacheEncoding(encoding="float32").block(VOCAB, TopK(7)), 7) == TopK(7)
    with pytest.raises(PipelineError, match="sampled caches need the compact encoding"):
        CacheEncoding(encoding="float32").block(VOCAB, Sampled(4))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"storage": "dense"}, r"encoding\.compact\.storage: input should be 'topk', 'sampled' or 'hybrid', got \"dense\""),
        ({"name": "delta"}, r"encoding: input tag 'delta' found using 'name' does not match any of the expected tags"),
        ({"storage": "sampled"}, r"encoding\.compact: value error, a sampled encoding needs draws and count_bytes"),
        ({"id_bytes": 2.0}, r"encoding\.compact\.id_bytes: input should be a valid integer, got 2\.0"),
    ],
)
def test_a_malformed_encoding_block_is_named_when_the_manifest_is_parsed(tiny_cache, edit, named):
    document = json.loads((tiny_cache / MANIFEST_FILE).read_text())
    block = Manifest.parse(document, tiny_cache).encoding_block
    assert block == encoding_of(document) and block.document() == document["encoding"]  # the typed block dumps back to what was written
    document["encoding"] |= edit
    with pytest.raises(PipelineError, match=named):
        Manifest.parse(document, tiny_cache)
