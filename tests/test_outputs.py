"""Output paths (pipeline/outputs.py): a command replaces only what it made, and refuses every hazardous
`--out` before any work, in one line, leaving the target exactly as it was."""

import subprocess
from pathlib import Path

import pytest
from conftest import error_line
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.outputs import MARKER_FILE

runner = CliRunner()
TINY_STUDENT = ["--epochs", "1", "--batch-size", "4"]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes: what "unchanged" is compared by."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def refused(args) -> str:
    """Run `kd ARGS`, expect exit 1 with exactly one line of output, an `error:` line; return it."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def kd(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def user_folder(tmp_path) -> Path:
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return folder


@pytest.fixture
def params(tiny_student_params) -> Path:
    return tiny_student_params


@pytest.fixture
def cache(cache_copy) -> Path:
    return cache_copy


def student(cache, out, params, *extra):
    return ["student", "--cache", cache, "--out", out, "--params", params, *TINY_STUDENT, *extra]


def test_student_refuses_a_folder_of_the_users_files(user_folder, cache, params):
    before = tree(user_folder)
    assert refused(student(cache, user_folder, params)) == (
        f"error: --out {user_folder} already holds files that are not a student folder (2 entries: notes.txt, sub); choose another folder, or pass --overwrite to replace it"
    )
    assert tree(user_folder) == before


def test_student_out_on_its_own_inputs(cache, params, tiny_teacher):
    before = tree(cache.parent)
    assert refused(student(cache, cache, params)) == f"error: --out {cache} is {cache}, an input of this command; write the output somewhere else"
    assert refused(student(cache, cache.parent, params)) == f"error: --out {cache.parent} holds {cache}, an input of this command; write the output somewhere else"
    inside = cache / "student"
    assert refused(student(cache, inside, params)) == f"error: --out {inside} lies inside {cache}, an input of this command; write the output somewhere else"
    pruned = ["--init", "prune", "--teacher", tiny_teacher]
    assert refused(student(cache, tiny_teacher, params, *pruned)) == f"error: --out {tiny_teacher} is {tiny_teacher}, an input of this command; write the output somewhere else"
    assert tree(cache.parent) == before  # --overwrite does not lift any of these
    assert refused(student(cache, cache, params, "--overwrite")).endswith("an input of this command; write the output somewhere else")


def test_student_out_on_the_working_directory_and_above(tmp_path, tiny_cache, params, monkeypatch):
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for out in (".", "..", str(work)):
        assert refused(student(tiny_cache, out, params)) == f"error: --out {Path(out)} is the working directory or a folder above it; give a folder of its own"
    assert (work / "keep.txt").read_text() == "x" and sorted(p.name for p in work.iterdir()) == ["keep.txt"]


def test_student_out_on_a_file_fails_before_training(tmp_path, tiny_cache, params):
    target = tmp_path / "model.bin"
    target.write_bytes(b"\x00weights")
    loss_log = tmp_path / "loss.csv"
    assert refused(student(tiny_cache, target, params, "--loss-log", loss_log)) == f"error: --out {target} is a file; it must be a folder (or not exist yet)"
    assert target.read_bytes() == b"\x00weights" and not loss_log.exists()  # no step ran
    blocked = target / "student"
    assert refused(student(tiny_cache, blocked, params)) == f"error: cannot create --out {blocked}: {target} is a file"


def test_student_refuses_other_files_as_its_loss_log_and_training_state(tmp_path, tiny_cache, params, user_folder):
    notes = tmp_path / "results.csv"
    notes.write_text("model,score\nmine,1\n")
    out = tmp_path / "student"
    assert refused(student(tiny_cache, out, params, "--loss-log", notes)) == (f"error: --loss-log {notes} exists and is not a loss log; choose another file name, or pass --overwrite to replace it")
    before = tree(user_folder)
    assert refused(student(tiny_cache, out, params, "--checkpoints", user_folder)).startswith(f"error: --checkpoints {user_folder} already holds files that are not a training state")
    assert tree(user_folder) == before and notes.read_text() == "model,score\nmine,1\n" and not out.exists()


def test_student_replaces_its_own_folder_and_overwrite_replaces_others(tmp_path, tiny_cache, params, user_folder):
    out = tmp_path / "student"
    log = tmp_path / "loss.csv"
    kd(student(tiny_cache, out, params, "--loss-log", log))
    assert (out / MARKER_FILE).exists() and (out / "config.json").exists()
    kd(student(tiny_cache, out, params, "--loss-log", log))  # its own folder and log: replaced without a flag
    kd(student(tiny_cache, user_folder, params, "--overwrite"))
    assert not (user_folder / "notes.txt").exists() and (user_folder / "model.safetensors").exists()


def test_teacher_refuses_a_folder_that_is_not_a_cache(tmp_path, prepared, tiny_teacher, tiny_cache, params):
    """The reported case: `kd teacher --out` into a student folder overwrote its README.md with the dataset card."""
    out = tmp_path / "student"
    kd(student(tiny_cache, out, params))
    before = tree(out)
    args = ["teacher", "--model", tiny_teacher, "--prepared", prepared, "--out", out, "--k", "4", "--max-new-tokens", "4"]
    assert refused(args) == (
        f"error: --out {out} already holds files that are not a cache ({len(before)} entries: .kd-output.json, README.md, chat_template.jinja, ...); choose another folder, or pass --overwrite to replace it"
    )
    assert tree(out) == before
    assert refused([*args, "--overwrite", "--num-workers", "2"]) == "error: --overwrite replaces the whole cache, which other workers are filling: run it with one worker"
    assert tree(out) == before
    assert "cache complete" in kd([*args, "--overwrite"])
    assert (out / "manifest.json").exists() and not (out / "config.json").exists()
    assert refused(["teacher", "--model", tiny_teacher, "--prepared", prepared, "--out", prepared]).endswith(f"is {prepared}, an input of this command; write the output somewhere else")


def test_prepare_out_on_a_file_or_a_folder_of_other_files(tmp_path, small_prompts, user_folder):
    target = tmp_path / "prepared.txt"
    target.write_text("keep")
    assert refused(["prepare", small_prompts, "--out", target]) == f"error: --out {target} is a file; it must be a folder (or not exist yet)"
    before = tree(user_folder)
    assert refused(["prepare", small_prompts, "--out", user_folder]).startswith(f"error: --out {user_folder} already holds files that are not a prepared prompt set")
    assert tree(user_folder) == before and target.read_text() == "keep"
    out = tmp_path / "prepared"
    kd(["prepare", small_prompts, "--out", out])
    kd(["prepare", small_prompts, "--out", out])  # its own output: rewritten
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "train.parquet", "validation.parquet"]


def test_convert_and_evaluate_refuse_the_users_files(tmp_path, tiny_cache, tiny_teacher, user_folder):
    before = tree(user_folder)
    assert refused(["convert", tiny_cache, user_folder, "--encoding", "float32"]).startswith(f"error: DST {user_folder} already holds files that are not a cache")
    assert tree(user_folder) == before
    report = tmp_path / "report.json"
    report.write_text('{"mine": 1}\n')
    args = ["evaluate", "--cache", tiny_cache, "--teacher", tiny_teacher, "--student", f"t={tiny_teacher}", "--out", report]
    assert refused(args) == f"error: --out {report} exists and is not a metrics file written by kd evaluate; choose another file name, or pass --overwrite to replace it"
    assert refused([*args[:-1], tmp_path]) == f"error: --out {tmp_path} is a folder; it must be a file name"
    assert report.read_text() == '{"mine": 1}\n'


def test_classification_commands_refuse_the_users_files(tmp_path, tiny_cache, user_folder):
    before = tree(user_folder)
    assert refused(["classify", "student", "--cache", tiny_cache, "--out", user_folder]).startswith(f"error: --out {user_folder} already holds files that are not a classifier folder")
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "a fine film"}\n')
    mine = user_folder / "notes.txt"
    assert refused(["classify", "augment", "--texts", texts, "--out", mine]) == f"error: --out {mine} exists; choose another file name, or pass --overwrite to replace it"
    assert refused(["classify", "answers", tiny_cache, "--out", mine]) == f"error: --out {mine} exists; choose another file name, or pass --overwrite to replace it"
    assert tree(user_folder) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: a real full disk for each writer (needs the right to mount, as root in CI)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_shipping_the_tokenizer(small_disk, prepared, tiny_teacher):
    out = small_disk / "cache"
    (small_disk / "filler").write_bytes(bytes(56 * 1024))  # room for the plan, not for the tokenizer
    args = ["teacher", "--model", tiny_teacher, "--prepared", prepared, "--out", out, "--k", "4", "--max-new-tokens", "4"]
    assert error_line(args) == f"error: disk full while writing {out / 'tokenizer'}; free space and rerun to resume"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # the cache folder it created is gone


def test_a_full_disk_while_saving_a_student(small_disk, tiny_cache, params):
    out = small_disk / "student"
    assert error_line(student(tiny_cache, out, params)) == f"error: disk full while writing {out}; free space and rerun to resume"
    assert list(small_disk.iterdir()) == []


def test_a_full_disk_while_saving_a_training_state(tmp_path, small_disk, tiny_cache, params):
    state = small_disk / "state"
    out = tmp_path / "student"
    assert error_line(student(tiny_cache, out, params, "--checkpoints", state, "--save-every", "1")) == (
        f"error: disk full while writing {state / 'training-state.pt'}; free space and rerun to resume"
    )
    assert [p.name for p in small_disk.rglob("*") if p.is_file()] == [] and not out.exists()


def test_a_chart_is_replaced_only_when_kd_pipeline_drew_it(tmp_path):
    from pipeline.lm.charts import plot_training
    from pipeline.outputs import claim_file
    from pipeline.reporting import CHART_FILE

    ours, theirs = tmp_path / "training.png", tmp_path / "photo.png"
    plot_training({"s": [{"step": 0, "kd": 1.0, "ce": 2.0}]}, {"models": {"teacher": {}, "s": {"kl_to_teacher": 1.0}}}, ours)
    claim_file(ours, CHART_FILE, "--chart")  # its own: fine
    theirs.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(PipelineError, match=f"^--chart {theirs} exists and is not a chart drawn by kd-pipeline; choose another file name, or pass --overwrite"):
        claim_file(theirs, CHART_FILE, "--chart")


def test_a_folder_with_a_foreign_manifest_is_not_a_cache(tmp_path, prepared, tiny_teacher):
    site = tmp_path / "site"
    (site / "assets").mkdir(parents=True)
    (site / "manifest.json").write_text('{"name": "my web app", "icons": []}\n')
    (site / "index.html").write_text("<html></html>\n")
    (site / "assets" / ".logo.png.tmp-9").write_bytes(b"\x89PNG")
    before = tree(site)
    assert refused(["teacher", "--model", tiny_teacher, "--prepared", prepared, "--out", site, "--k", "4"]).startswith(f"error: --out {site} already holds files that are not a cache")
    assert tree(site) == before


def test_overwrite_deletes_nothing_when_a_check_fails(tmp_path, prepared, tiny_teacher, user_folder):
    before = tree(user_folder)
    message = error_line(["teacher", "--model", tiny_teacher, "--prepared", prepared, "--out", user_folder, "--k", "99999", "--overwrite"])
    assert message == "error: k=99999 must be between 1 and the teacher's vocabulary size 320"
    assert tree(user_folder) == before


def test_the_training_state_folder_is_scratch_space_only(tmp_path, tiny_cache, params, user_folder):
    out, checkpoints = tmp_path / "student", tmp_path / "state"
    before = tree(user_folder)
    assert refused(student(tiny_cache, out, params, "--checkpoints", user_folder, "--overwrite")) == (
        f"error: --checkpoints {user_folder} already holds files that are not a training state (2 entries: notes.txt, sub); give a new or empty folder"
    )
    assert tree(user_folder) == before
    inside = checkpoints / "loss.csv"
    assert refused(student(tiny_cache, out, params, "--checkpoints", checkpoints, "--loss-log", inside)) == (
        f"error: --loss-log {inside} lies inside --checkpoints {checkpoints}, which the command replaces or deletes; keep the two apart"
    )
    checkpoints.mkdir()
    (checkpoints / ".training-state.pt.tmp-99999").write_bytes(b"half a state")  # a run killed while saving its first state
    kd(student(tiny_cache, out, params, "--checkpoints", checkpoints, "--save-every", "2"))
    assert not checkpoints.exists() and (out / "config.json").exists()


def test_a_symbolic_link_is_not_an_output(tmp_path, tiny_cache, params, user_folder):
    link = tmp_path / "link"
    link.symlink_to(user_folder)
    assert refused(student(tiny_cache, link, params)) == f"error: --out {link} is a symbolic link; give the folder or file it points to ({user_folder})"


def test_outputs_from_before_markers_are_still_their_own(tmp_path, tiny_cache, params, small_prompts):
    out = tmp_path / "student"
    kd(student(tiny_cache, out, params))
    (out / MARKER_FILE).unlink()  # as an earlier version left it: its model card says what it is
    kd(student(tiny_cache, out, params))
    prepared = tmp_path / "prepared"
    kd(["prepare", small_prompts, "--out", prepared])
    (prepared / MARKER_FILE).unlink()
    kd(["prepare", small_prompts, "--out", prepared])


def test_classify_teacher_never_replaces_its_own_data(tmp_path, tiny_teacher):
    data = tmp_path / "data"
    data.mkdir()
    train = data / "train.jsonl"
    train.write_text("".join(f'{{"text": "review number {i}", "label": "positive"}}\n' for i in range(4)))
    assert refused(["classify", "teacher", "--model", tiny_teacher, "--train", train, "--out", data, "--overwrite"]) == (
        f"error: --out {data} holds {train}, an input of this command; write the output somewhere else"
    )
    assert train.exists()
