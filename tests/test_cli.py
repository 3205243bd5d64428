import json

from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_missing_prompt_file_is_one_line_and_nonzero(tmp_path):
    result = runner.invoke(app, ["prepare", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "prepared")])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: prompt file not found: {tmp_path / 'nope.jsonl'}"
    assert not (tmp_path / "prepared").exists()


def test_unknown_teacher_path(tmp_path, prepared):
    result = runner.invoke(app, ["teacher", "--model", str(tmp_path / "missing"), "--prepared", str(prepared), "--out", str(tmp_path / "cache")])
    assert result.exit_code == 1 and "teacher model folder not found" in result.output
    assert not (tmp_path / "cache").exists()


def test_tokenizer_mismatch_is_refused(tmp_path, tiny_cache, other_tokenizer_dir):
    result = runner.invoke(app, ["student", "--cache", str(tiny_cache), "--tokenizer", str(other_tokenizer_dir), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert result.output.startswith("error: tokenizer mismatch: the cache was made with tokenizer")
    assert not (tmp_path / "s").exists()


def test_missing_cache_is_refused(tmp_path, tiny_teacher):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["student", "--cache", str(tmp_path / "empty"), "--tokenizer", str(tiny_teacher), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "manifest.json not found" in result.output


def test_inspect_prints_sizes_and_provenance(tiny_cache):
    result = runner.invoke(app, ["inspect", str(tiny_cache), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["k"] == 8 and summary["tokens"] > 0 and summary["tokenizer"]["vocab_size"] == 320
    text = runner.invoke(app, ["inspect", str(tiny_cache)]).output
    assert "bytes/token" in text and "top-k mass" in text


def test_teacher_student_evaluate_without_dvc(tmp_path, prepared, tiny_teacher):
    cache, student = tmp_path / "cache", tmp_path / "student"
    result = runner.invoke(app, ["teacher", "--model", str(tiny_teacher), "--prepared", str(prepared), "--out", str(cache), "--k", "4", "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    params = tmp_path / "params.yaml"
    params.write_text("student:\n  epochs: 1\n  batch_size: 4\n  model: {hidden_size: 64, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 128}\n")
    result = runner.invoke(app, ["student", "--cache", str(cache), "--tokenizer", str(tiny_teacher), "--out", str(student), "--params", str(params), "--loss-log", str(tmp_path / "loss.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "loss.csv").read_text().startswith("step,epoch,loss,kd,ce")
    result = runner.invoke(app, ["evaluate", "--cache", str(cache), "--teacher", str(tiny_teacher), "--student", f"kd={student}", "--out", str(tmp_path / "m.json"), "--speed-sequences", "2"])
    assert result.exit_code == 0, result.output
    assert "kd" in result.output and json.loads((tmp_path / "m.json").read_text())["models"]["kd"]["params"] > 0
