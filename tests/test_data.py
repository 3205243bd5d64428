import polars as pl
import pytest

from pipeline.data import read_prompts, split_prompts
from pipeline.errors import PipelineError


def test_ids_are_stable_and_splits_deterministic(tmp_path, small_prompts):
    prompts = read_prompts(small_prompts)
    assert prompts["id"].n_unique() == prompts.height == 20
    more = tmp_path / "more.jsonl"
    more.write_text(small_prompts.read_text() + '{"id": "extra", "prompt": "One more prompt."}\n')
    first = split_prompts(prompts, 0.3, seed=0)
    second = split_prompts(read_prompts(more), 0.3, seed=0)
    for name in first:  # adding a prompt never moves an existing one
        assert set(first[name]["id"]) <= set(second[name]["id"])
    assert split_prompts(prompts, 0.3, seed=1)["validation"]["id"].to_list() != first["validation"]["id"].to_list()


def test_ids_from_text_when_absent(tmp_path):
    path = tmp_path / "p.csv"
    pl.DataFrame({"text": ["a b c", "d e f"]}).write_csv(path)
    first = read_prompts(path, text_column="text")["id"].to_list()
    pl.DataFrame({"text": ["d e f", "a b c"]}).write_csv(path)
    assert sorted(read_prompts(path, text_column="text")["id"].to_list()) == sorted(first)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "prompt file not found"),
        ("", "has no rows"),
        ('{"text": "hi"}\n', "no 'prompt' column"),
        ('{"prompt": "   "}\n', "empty prompt"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "duplicate id"),
        ('{"prompt": "x"}\n{"prompt": "x"}\n', "duplicate id"),
    ],
)
def test_bad_prompt_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PipelineError, match=message) as error:
        read_prompts(path)
    assert "\n" not in str(error.value)


def test_invalid_utf8_is_reported(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_bytes(b"prompt\n\xff\xfe bad bytes\n")
    with pytest.raises(PipelineError, match="is not valid UTF-8: byte 0xff on line 2"):
        read_prompts(path)
