"""`student.init: prune`: a student cut from the teacher, checked against the teacher's own tensors."""

from __future__ import annotations

import pytest
import torch
from conftest import make_llama, make_tokenizer

from pipeline.errors import PipelineError
from pipeline.lm.prune import PruneSettings, kept_layers, pruned_student
from pipeline.lm.student import initial_student
from pipeline.models import load_causal_lm

LAYERS = 6


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def deep_teacher(tmp_path_factory, tokenizer):
    """A 6-layer teacher (hidden 64, MLP width 256)."""
    return make_llama(tmp_path_factory.mktemp("models") / "deep-teacher", tokenizer, seed=3, layers=LAYERS, hidden_size=64)


def layer_tensors(model, index: int) -> dict[str, torch.Tensor]:
    prefix = f"model.layers.{index}."
    return {name[len(prefix) :]: tensor for name, tensor in model.state_dict().items() if name.startswith(prefix)}


def assert_cut_from(student, teacher, keep: list[int]) -> None:
    """Every student tensor equals the teacher's: the kept layers in order, embeddings, final norm and output layer."""
    assert student.config.num_hidden_layers == len(keep) and len(student.model.layers) == len(keep)
    for position, index in enumerate(keep):
        ours, theirs = layer_tensors(student, position), layer_tensors(teacher, index)
        assert ours.keys() == theirs.keys() and ours
        for name, tensor in ours.items():
            assert torch.equal(tensor, theirs[name]), f"layer {position} (teacher {index}) {name}"
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert student.config.tie_word_embeddings == teacher.config.tie_word_embeddings
    assert (student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()) == teacher.config.tie_word_embeddings


def test_every_second_layer_is_kept_exactly(deep_teacher, tokenizer):
    teacher = load_causal_lm(deep_teacher)
    student = pruned_student(deep_teacher, PruneSettings(every=2), len(tokenizer))
    assert_cut_from(student, teacher, [0, 2, 4])
    assert student.config.num_hidden_layers == 3 and student.config.intermediate_size == teacher.config.intermediate_size
    assert student.training and all(p.dtype == torch.float32 for p in student.parameters())


def test_chosen_layers_are_kept_in_order(deep_teacher, tokenizer):
    teacher = load_causal_lm(deep_teacher)
    student = pruned_student(deep_teacher, PruneSettings(layers=[1, 5]), len(tokenizer))
    assert_cut_from(student, teacher, [1, 5])
    assert kept_layers(PruneSettings(layers=[1, 5]), LAYERS) == [1, 5] and kept_layers(PruneSettings(every=4), LAYERS) == [0, 4]


def test_narrow_mlps_keep_the_most_important_channels(deep_teacher, tokenizer):
    width = 40
    teacher = load_causal_lm(deep_teacher)
    student = pruned_student(deep_teacher, PruneSettings(layers=[0, 3], intermediate_size=width), len(tokenizer)).eval()
    assert student.config.intermediate_size == width
    torch.manual_seed(0)
    x = torch.randn(3, 5, teacher.config.hidden_size)
    for position, index in enumerate([0, 3]):
        gate, up, down = (getattr(teacher.model.layers[index].mlp, name).weight for name in ("gate_proj", "up_proj", "down_proj"))
        importance = torch.linalg.vector_norm(gate, dim=1) * torch.linalg.vector_norm(up, dim=1) * torch.linalg.vector_norm(down, dim=0)
        order = sorted(range(len(importance)), key=lambda c: -importance[c].item())
        kept = sorted(order[:width])
        assert importance[order[width - 1]] > importance[order[width]]  # no tie at the cut
        mlp = student.model.layers[position].mlp
        assert torch.equal(mlp.gate_proj.weight, gate[kept]) and torch.equal(mlp.up_proj.weight, up[kept])
        assert torch.equal(mlp.down_proj.weight, down[:, kept])
        with torch.no_grad():
            by_hand = (torch.nn.functional.silu(x @ gate[kept].T) * (x @ up[kept].T)) @ down[:, kept].T
            assert torch.allclose(mlp(x), by_hand, atol=1e-6, rtol=1e-5)
        attention = {name: t for name, t in layer_tensors(student, position).items() if not name.startswith("mlp.")}
        for name, tensor in attention.items():
            assert torch.equal(tensor, layer_tensors(teacher, index)[name]), name


def test_keeping_every_layer_reproduces_the_teachers_logits(deep_teacher, tokenizer):
    teacher = load_causal_lm(deep_teacher)
    student = pruned_student(deep_teacher, PruneSettings(every=1), len(tokenizer)).eval()
    torch.manual_seed(1)
    input_ids = torch.randint(0, len(tokenizer), (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0
    with torch.no_grad():
        expected = teacher(input_ids=input_ids, attention_mask=attention_mask).logits
        actual = student(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.allclose(actual, expected, atol=1e-6, rtol=1e-6)


def test_bad_prune_settings_are_one_clear_error(deep_teacher, tokenizer):
    with pytest.raises(PipelineError, match=r"^student.prune.layers: layer 6 is out of range, the teacher has 6 decoder layers \(0..5\)$"):
        pruned_student(deep_teacher, PruneSettings(layers=[0, 6]), len(tokenizer))
    with pytest.raises(PipelineError, match=r"^give exactly one of layers .* or every .*, got both$"):
        PruneSettings(layers=[0], every=2)
    with pytest.raises(PipelineError, match=r"^student.prune: give exactly one of layers .* or every .*, got neither$"):
        PruneSettings.from_section({}, "student.prune")
    with pytest.raises(PipelineError, match=r"^layers must be increasing teacher layer indices without duplicates, got \[2, 2\]$"):
        PruneSettings(layers=[2, 2])
    with pytest.raises(PipelineError, match=r"^student.prune.intermediate_size: 512 is wider than the teacher's MLPs \(256 channels\)$"):
        pruned_student(deep_teacher, PruneSettings(every=1, intermediate_size=512), len(tokenizer))
    with pytest.raises(PipelineError, match=r"^student.init prune: the teacher at .* has 320 embedding rows, but the cache holds token ids up to 999$"):
        pruned_student(deep_teacher, PruneSettings(every=1), 1000)
    with pytest.raises(PipelineError, match=r"^student.prune.layers.0: input should be greater than or equal to 0, got -1$"):
        PruneSettings.from_section({"layers": [-1]}, "student.prune")


def test_a_teacher_that_is_not_llama_style_is_refused(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(PipelineError, match=r"^student.init prune: the teacher is a 'gpt2' model; pruning needs a Llama-style decoder"):
        pruned_student(tmp_path / "gpt2", PruneSettings(every=1), len(tokenizer))


def test_initial_student_prune_returns_the_pruned_teacher(deep_teacher, tokenizer):
    prune = PruneSettings(every=3)
    student = initial_student("prune", {}, len(tokenizer), 0, prune=prune, teacher=deep_teacher)
    assert_cut_from(student, load_causal_lm(deep_teacher), [0, 3])
    with pytest.raises(PipelineError, match=r"^student.init prune needs the teacher model folder$"):
        initial_student("prune", {}, len(tokenizer), 0, prune=prune)
    with pytest.raises(PipelineError, match=r"^student.init prune needs student.prune settings$"):
        initial_student("prune", {}, len(tokenizer), 0, teacher=deep_teacher)
