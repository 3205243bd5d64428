"""Cross-tokenizer distillation: alignment, vocabulary map, the three losses, errors, the CLI.

References are independent of the code under test: hand-computed alignments on hand-built
tokenizers, character offsets from the tokenizers' own `return_offsets_mapping`, the same-tokenizer
loss for identical tokenizers, dense numpy computations for the exact-map KL and for ULD.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import PROMPTS, make_tokenizer
from typer.testing import CliRunner

from pipeline.cache import Cache
from pipeline.cache.codec import CacheRows
from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.lm.batch import TopKBatch
from pipeline.lm.cross_tokenizer import (
    CrossBatch,
    CrossTokenizer,
    CrossTokenizerSettings,
    align_sequence,
    cross_loss,
    cross_tokenizer,
    gold_terms,
    map_entries,
    uld_distance,
    vocabulary_map,
)
from pipeline.lm.streaming import to_topk_batch
from pipeline.lm.student import build_student
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import train_student

STUDENT = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512}
TEXTS = ["The cat sat on the mat.", "Write a short poem about the sea, please!", "How do I make bread at home?"]


def metaspace_tokenizer(vocab_size: int = 400):
    """A SentencePiece-style BPE (Metaspace, byte fallback) trained on the same prompts as conftest's byte-level one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    core = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")])
    specials = ["<s>", "</s>", "<pad>"] + [f"<0x{b:02X}>" for b in range(256)]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size + 256, special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def teacher_tok():
    return make_tokenizer()  # the tiny teacher's tokenizer (conftest): byte-level BPE, 320 ids


@pytest.fixture(scope="module")
def student_tok():
    return metaspace_tokenizer()


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, student_tok):
    path = tmp_path_factory.mktemp("models") / "metaspace-tokenizer"
    student_tok.save_pretrained(path)
    return path


def hand_built_pair():
    """Two tokenizers whose tokens of 'Hello world!' are fixed by hand: Hel|lo|Ġworld|! and Hello|▁wor|ld|!."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def build(chars, merges, pre, dec):
        vocab = {c: i for i, c in enumerate(chars)}
        for a, b in merges:
            vocab.setdefault(a + b, len(vocab))
        core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        core.pre_tokenizer, core.decoder = pre, dec
        return PreTrainedTokenizerFast(tokenizer_object=core)

    teacher = build(
        list("Helowrd!aĠ"),
        [("H", "e"), ("He", "l"), ("l", "o"), ("Ġ", "w"), ("Ġw", "o"), ("r", "l"), ("Ġwo", "rl"), ("Ġworl", "d")],
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        decoders.ByteLevel(),
    )
    student = build(
        list("Helowrd!a▁"),
        [("H", "e"), ("He", "l"), ("Hel", "l"), ("Hell", "o"), ("▁", "w"), ("▁w", "o"), ("▁wo", "r"), ("l", "d")],
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        decoders.Metaspace(replacement="▁", prepend_scheme="never"),
    )
    return teacher, student


def test_alignment_and_map_on_hand_built_tokenizers():
    teacher, student = hand_built_pair()
    t_ids = np.array(teacher("Hello world!", add_special_tokens=False)["input_ids"])
    assert teacher.convert_ids_to_tokens(t_ids.tolist()) == ["Hel", "lo", "Ġworld", "!"]
    # teacher token starts 0, 3, 5, 11; student (Hello|▁wor|ld|!) 0, 5, 9, 11. The answer starts at
    # teacher token 1 ('lo', character 3), inside student token 0: student answer tokens are 1..3.
    # Shared boundaries after the start: 5 (student 1, teacher 2) and 11 (student 3, teacher 3).
    seq = align_sequence(t_ids, 1, teacher, student)
    assert student.convert_ids_to_tokens(seq.student_ids.tolist()) == ["Hello", "▁wor", "ld", "!"]
    assert seq.response_start == 1
    assert seq.student_positions.tolist() == [1, 3] and seq.teacher_positions.tolist() == [2, 3]
    mapping = vocabulary_map(teacher, student, len(teacher))
    tv, sv = teacher.get_vocab(), student.get_vocab()
    assert mapping[tv["Hel"]] == sv["Hel"] and mapping[tv["!"]] == sv["!"] and mapping[tv["Ġ"]] == sv["▁"] and mapping[tv["Ġw"]] == sv["▁w"]
    assert mapping[tv["lo"]] == -1 and mapping[tv["Ġworld"]] == -1  # no student token adds 'lo' or ' world'


def offsets_reference(tokenizer, text):
    """Start character of each token of the canonical tokenization, from the Rust offsets (not from decoding)."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoding["input_ids"], [start for start, _ in encoding["offset_mapping"]]


@pytest.mark.parametrize("text", TEXTS)
def test_alignment_equals_the_offsets_of_both_tokenizers(text, teacher_tok, student_tok):
    t_ids, t_starts = offsets_reference(teacher_tok, text)
    s_ids, s_starts = offsets_reference(student_tok, text)
    response_start = 3
    seq = align_sequence(np.array(t_ids), response_start, teacher_tok, student_tok)
    assert seq.student_ids.tolist() == s_ids
    answer_char = t_starts[response_start]
    first = max(1, max(m for m, start in enumerate(s_starts) if start <= answer_char))
    expected = [(m, t_starts.index(s_starts[m])) for m in range(first, len(s_ids)) if s_starts[m] in t_starts[response_start:]]
    assert seq.response_start == first
    assert list(zip(seq.student_positions.tolist(), seq.teacher_positions.tolist())) == expected
    assert len(expected) > 0


def synthetic_batch(tokenizer, texts, k=6, response_start=3, seed=0) -> TopKBatch:
    """A top-k batch over the canonical tokens of `texts`, with random teacher distributions."""
    rng = np.random.default_rng(seed)
    seqs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    vocab = len(tokenizer)
    entries, ids, logprobs, token_logprobs = [], [], [], []
    for seq in seqs:
        for _ in range(response_start, len(seq)):
            logits = rng.normal(size=vocab) * 3
            lp = logits - np.logaddexp.reduce(logits)
            top = np.argsort(-lp, kind="stable")[:k]
            entries.append(k)
            ids.extend(top)
            logprobs.extend(lp[top])
            token_logprobs.append(lp[top[0]])
    rows = CacheRows(
        row_ids=[str(i) for i in range(len(seqs))],
        input_ids=np.concatenate([np.array(s, dtype=np.int64) for s in seqs]),
        seq_lengths=np.array([len(s) for s in seqs], dtype=np.int64),
        response_start=np.full(len(seqs), response_start, dtype=np.int64),
        entries=np.array(entries, dtype=np.int64),
        entry_ids=np.array(ids, dtype=np.int64),
        entry_logprobs=np.array(logprobs, dtype=np.float32),
        token_logprobs=np.array(token_logprobs, dtype=np.float32),
    )
    return to_topk_batch(rows)


def gradients(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("overrides", [{}, {"loss": "jsd", "temperature": 2.0, "positions": "all"}, {"tail": "renormalize", "chunk_positions": 5}])
def test_identical_tokenizers_give_the_same_tokenizer_loss_exactly(teacher_tok, overrides):
    batch = synthetic_batch(teacher_tok, TEXTS)
    converted = CrossTokenizer(teacher_tok, teacher_tok, len(teacher_tok)).convert(batch)
    assert converted.num_tokens == batch.num_tokens and len(converted.targets) == batch.num_tokens  # every position aligns
    settings = StudentSettings(model=STUDENT, alpha=0.7, **overrides)
    losses, grads = [], []
    for item, s in ((batch, settings), (converted, settings.updated("student", cross_tokenizer={}))):
        model = build_student(STUDENT, len(teacher_tok), seed=0)
        terms = item.loss(model, s.training_objective())
        terms["loss"].backward()
        losses.append([terms[name].item() for name in ("loss", "kd", "ce")])
        grads.append(gradients(model))
    assert losses[0] == losses[1]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_exact_map_equals_a_dense_reference(teacher_tok, student_tok):
    batch = synthetic_batch(teacher_tok, TEXTS, k=12, seed=1)
    convert = CrossTokenizer(teacher_tok, student_tok, len(teacher_tok))
    cb = convert.convert(batch)
    model = build_student(STUDENT, len(student_tok), seed=0).double()
    spec = StudentSettings(model=STUDENT, alpha=1.0)
    kd = cross_loss(model, cb, spec, CrossTokenizerSettings(), "response")["kd"].item()
    with torch.no_grad():
        hidden = model.model(input_ids=cb.input_ids, attention_mask=cb.attention_mask).last_hidden_state[cb.rows, cb.columns]
        q = torch.softmax(model.lm_head(hidden), -1).numpy()
    # the reference: teacher entries gathered by hand at the aligned teacher positions, mapped id by id
    teacher_ids, teacher_lp = batch.listed_ids.numpy(), batch.listed_logprobs.numpy().astype(np.float64)
    offsets = np.concatenate([[0], np.cumsum((batch.attention_mask.sum(1) - batch.response_start).numpy())])
    kls, mapped_mass = [], []
    a = 0
    for r in range(len(batch.response_start)):
        ids = batch.input_ids[r][batch.attention_mask[r].bool()].numpy()
        seq = align_sequence(ids, int(batch.response_start[r]), teacher_tok, student_tok)
        for j in seq.teacher_positions:
            flat = offsets[r] + j - int(batch.response_start[r])
            p = {}
            for v, lp in zip(teacher_ids[flat], teacher_lp[flat]):
                u = convert.mapping[v]
                if u >= 0:
                    p[u] = p.get(u, 0.0) + np.exp(lp)
            tail = 1 - sum(p.values())
            qa = q[a]
            kl = sum(pu * np.log(pu / qa[u]) for u, pu in p.items()) + tail * np.log(tail / (1 - sum(qa[u] for u in p)))
            kls.append(kl)
            mapped_mass.append(sum(p.values()))
            a += 1
    assert a == cb.num_tokens > 0
    assert kd == pytest.approx(np.mean(kls), rel=1e-5)
    assert convert.report()["mapped_mass_share"] == pytest.approx(np.mean(mapped_mass), rel=1e-5)


@pytest.mark.parametrize("loss", ["exact_map", "uld"])
def test_unaligned_answer_positions_weigh_in_ce_alone(teacher_tok, student_tok, loss):
    cb = CrossTokenizer(teacher_tok, student_tok, len(teacher_tok)).convert(synthetic_batch(teacher_tok, TEXTS, k=12, seed=4))
    aligned, scored = cb.num_tokens, len(cb.targets)
    assert 0 < aligned < scored
    model = build_student(STUDENT, len(student_tok), seed=0).double()
    alpha = 0.6
    terms = cross_loss(model, cb, StudentSettings(model=STUDENT, alpha=alpha), CrossTokenizerSettings(loss=loss), "response")
    with torch.no_grad():
        hidden = model.model(input_ids=cb.input_ids, attention_mask=cb.attention_mask).last_hidden_state[cb.rows, cb.columns]
        ce = torch.nn.functional.cross_entropy(model.lm_head(hidden), cb.targets, reduction="none").numpy()
    # aligned: alpha * divergence + (1 - alpha) * CE; unaligned: the whole weight on CE
    expected = alpha * terms["kd"].item() + (1 - alpha) * ce[:aligned].sum() / scored + ce[aligned:].sum() / scored
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-9)


def test_entries_mapping_to_one_student_id_are_summed():
    mapping = np.array([5, 5, -1, 7])
    ids = np.array([[0, 1, 2, 3]])
    lp = np.log(np.array([[0.4, 0.3, 0.2, 0.05]], dtype=np.float32))
    mapped_ids, mapped_lp, mapped = map_entries(ids, lp, mapping)
    assert mapped.tolist() == [[True, True, False, True]]
    np.testing.assert_allclose(np.exp(mapped_lp), [[0.7, 0.0, 0.0, 0.05]], rtol=1e-6)
    assert mapped_ids[0, 0] == 5 and mapped_ids[0, 3] == 7


def numpy_uld(p_full, q_full):
    """ULD as Boizard et al. define it: L1 between the sorted probability vectors, the shorter padded with zeros."""
    n = max(len(p_full), len(q_full))
    p = np.sort(np.pad(p_full, (0, n - len(p_full))))[::-1]
    q = np.sort(np.pad(q_full, (0, n - len(q_full))))[::-1]
    return np.abs(p - q).sum()


def test_uld_against_numpy():
    rng = np.random.default_rng(0)
    teacher = torch.log_softmax(torch.tensor(rng.normal(size=(5, 30)) * 2), -1)
    student = torch.log_softmax(torch.tensor(rng.normal(size=(5, 70)) * 2), -1)
    full = uld_distance(teacher, student)  # every teacher id listed: the full ULD
    expected = [numpy_uld(np.exp(t.numpy()), np.exp(s.numpy())) for t, s in zip(teacher, student)]
    np.testing.assert_allclose(full.numpy(), expected, rtol=1e-10)
    # top-k: the k largest on each side, then the rest of each side's mass as one value
    k = 6
    listed = teacher.topk(k).values
    padded = torch.cat([listed, torch.full((5, 2), -torch.inf, dtype=listed.dtype)], 1)
    for row, value in enumerate(uld_distance(padded, student).numpy()):
        p, q = np.sort(np.exp(teacher[row].numpy()))[::-1][:k], np.sort(np.exp(student[row].numpy()))[::-1][:k]
        assert value == pytest.approx(np.abs(p - q).sum() + abs((1 - p.sum()) - (1 - q.sum())), rel=1e-10)


def test_gold_against_numpy_with_a_full_teacher():
    rng = np.random.default_rng(3)
    positions, teacher_vocab, student_vocab = 4, 12, 15
    mapping = np.array([3, 0, -1, 7, 7, -1, 11, 2, -1, 14, 5, -1])  # two teacher ids onto student 7, four unmapped
    teacher = np.log(rng.dirichlet(np.ones(teacher_vocab), size=positions))
    order = np.argsort(-teacher, axis=1, kind="stable")
    listed_lp = np.take_along_axis(teacher, order, 1).astype(np.float32)
    ids, lp, mapped = map_entries(order, listed_lp, mapping)
    empty = torch.zeros(0, dtype=torch.long)
    batch = CrossBatch(empty, empty, empty, empty, empty, torch.from_numpy(ids), torch.from_numpy(lp), torch.from_numpy(listed_lp), torch.from_numpy(mapped), empty, empty, empty)
    student = torch.log_softmax(torch.tensor(rng.normal(size=(positions, student_vocab)) * 2), -1)
    cross = CrossTokenizerSettings(loss="gold", matched_weight=0.7, unmatched_weight=1.3)
    value = gold_terms(batch, student, StudentSettings(), cross).item()
    expected = 0.0
    for a in range(positions):
        p_t, q = np.exp(teacher[a].astype(np.float32).astype(np.float64)), np.exp(student[a].numpy())
        on_student = {}
        for v, u in enumerate(mapping):
            if u >= 0:
                on_student[u] = on_student.get(u, 0.0) + p_t[v]
        tail = 1 - sum(on_student.values())
        kl = sum(p * np.log(p / q[u]) for u, p in on_student.items()) + tail * np.log(tail / (1 - sum(q[u] for u in on_student)))
        outside = [q[u] for u in range(student_vocab) if u not in on_student]
        expected += 0.7 * kl + 1.3 * numpy_uld(p_t[mapping < 0], np.array(outside))
    assert value == pytest.approx(expected, rel=1e-5)


def test_gold_without_its_ulD_part_is_the_exact_map_loss(teacher_tok, student_tok):
    cb = CrossTokenizer(teacher_tok, student_tok, len(teacher_tok)).convert(synthetic_batch(teacher_tok, TEXTS, k=12, seed=2))
    model = build_student(STUDENT, len(student_tok), seed=0).double()
    spec = StudentSettings(model=STUDENT, alpha=0.5)
    exact = cross_loss(model, cb, spec, CrossTokenizerSettings(), "response")
    gold = cross_loss(model, cb, spec, CrossTokenizerSettings(loss="gold", unmatched_weight=0.0), "response")
    assert gold["loss"].item() == pytest.approx(exact["loss"].item(), rel=1e-10)
    uld = cross_loss(model, cb, spec, CrossTokenizerSettings(loss="uld"), "response")
    assert uld["ce"].item() == pytest.approx(exact["ce"].item(), rel=1e-10) and 0 < uld["kd"].item() <= 2


def test_student_tokenizer_that_cannot_reproduce_the_text_is_refused(teacher_tok):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "cat": 2}, unk_token="[UNK]"))
    core.normalizer, core.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    lossy = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    batch = synthetic_batch(teacher_tok, TEXTS[:1])
    with pytest.raises(PipelineError, match=r"^the student tokenizer cannot reproduce the cached text: decoding its tokens gives"):
        CrossTokenizer(teacher_tok, lossy, len(teacher_tok)).convert(batch)


def test_an_answer_without_a_student_boundary_aligns_nothing():
    teacher, student = hand_built_pair()
    t_ids = np.array(teacher("Hello", add_special_tokens=False)["input_ids"])  # Hel|lo against Hello: the answer 'lo' has no student boundary
    assert len(align_sequence(t_ids, 1, teacher, student).student_positions) == 0


def small_params(tmp_path, **student):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"student": {"epochs": 1, "batch_size": 4, "model": STUDENT, "warmup_steps": 1, **student}}))
    return params


def test_cli_trains_a_student_with_its_own_tokenizer(tmp_path, tiny_cache, tiny_teacher, student_dir, student_tok):
    out = tmp_path / "student"
    args = ["student", "--cache", str(tiny_cache), "--tokenizer", str(student_dir), "--out", str(out), "--params", str(small_params(tmp_path))]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and refused.output.startswith("error: tokenizer mismatch") and "student.cross_tokenizer" in refused.output
    result = CliRunner().invoke(app, [*args, "--cross-tokenizer", "exact_map", "--loss-log", str(tmp_path / "loss.csv")])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings == len(student_tok)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == student_tok.get_vocab()
    assert (tmp_path / "loss-validation.csv").exists() and '"cross_tokenizer": {' in (out / "README.md").read_text()
    evaluated = CliRunner().invoke(app, ["evaluate", "--cache", str(tiny_cache), "--teacher", str(tiny_teacher), "--student", f"x={out}", "--out", str(tmp_path / "m.json"), "--speed-sequences", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads((tmp_path / "m.json").read_text())["models"]["x"]
    reference = train_run_validation_kl(tmp_path / "loss-validation.csv")
    assert scores["aligned_positions"] > 0 and scores["kl_to_teacher"] == pytest.approx(reference, rel=1e-4)
    assert 0 < scores["aligned_share"] <= 1 and 0 < scores["mapped_mass_share"] <= 1


def train_run_validation_kl(path):
    """The final validation KL the training run logged: the same exact-map KL over the same aligned positions."""
    from pipeline.train_loop import read_loss_log

    return read_loss_log(path)[-1]["val_kl"]


def test_uld_student_trains_and_the_validation_split_is_reported(tmp_path, tiny_cache, student_dir, caplog):
    settings = StudentSettings(model=STUDENT, epochs=1, batch_size=4, tokenizer=str(student_dir), cross_tokenizer={"loss": "uld"})
    with caplog.at_level("INFO"):
        run = train_student(tiny_cache, settings, tmp_path / "student")
    assert run.steps and all(np.isfinite(row["loss"]) for row in run.steps) and run.validation[-1]["val_kl"] > 0
    assert any("of student answer positions align" in message for message in caplog.messages)


def test_cache_without_a_tokenizer_needs_the_teacher_tokenizer(tmp_path, tiny_cache, tiny_teacher, other_tokenizer_dir, student_tok):
    cache_dir = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache_dir)
    shutil.rmtree(cache_dir / "tokenizer")
    cache = Cache.open(cache_dir)
    with pytest.raises(PipelineError, match="ships no teacher tokenizer.*student.cross_tokenizer.teacher_tokenizer"):
        cross_tokenizer(cache, student_tok, CrossTokenizerSettings())
    with pytest.raises(PipelineError, match="but the cache was made with"):
        cross_tokenizer(cache, student_tok, CrossTokenizerSettings(teacher_tokenizer=str(other_tokenizer_dir)))
    assert cross_tokenizer(cache, student_tok, CrossTokenizerSettings(teacher_tokenizer=str(tiny_teacher))).mapping.shape == (cache.vocab_size,)


def test_settings_refuse_unknown_keys():
    with pytest.raises(PipelineError, match=r"unknown setting\(s\) in 'student.cross_tokenizer': los"):
        StudentSettings.from_section({"cross_tokenizer": {"los": "uld"}}, "student")
    with pytest.raises(PipelineError, match="student.cross_tokenizer.loss"):
        StudentSettings.from_section({"cross_tokenizer": {"loss": "kl"}}, "student")
