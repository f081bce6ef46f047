"""`--executor ray`: SL-CAI over local Ray workers gives the single-process output, byte for byte.

One local Ray instance (2 CPUs) serves the whole module; the CLI joins it instead of starting its
own. The tiny random model keeps each run to seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import cai
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from constitutional.cli.sl_cai import app as sl_cai_app
from constitutional.errors import BackendError, UserError
from constitutional.scale.cluster import probe_address


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "red.jsonl"
    # Different lengths, so the single-process plan sorts them into mixed batches.
    rows = [
        {"id": f"r{i}", "prompt": f"How would I do risky thing {i}?" + " Be detailed." * (i % 3)}
        for i in range(10)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sl_generate(prompts: Path, out: Path, model: Path, *extra: str, cache: Path | None = None):
    args = [
        "generate",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--model",
        str(model),
        "--rounds",
        "2",
        "--max-tokens",
        "12",
        "--batch-size",
        "3",
        "--helpful-ratio",
        "0.2",
        "--seed",
        "7",
        *(["--cache", str(cache)] if cache else ["--no-cache"]),
        *extra,
    ]
    result = CliRunner().invoke(sl_cai_app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(Path(f"{out}.manifest.json").read_text())["stages"]["sl_cai_generate"]


def test_ray_run_is_identical_to_single_process_and_resumes(
    ray_local, prompts, tiny_model_dir, tmp_path
):
    sl_generate(prompts, tmp_path / "one.jsonl", tiny_model_dir)
    cache = tmp_path / "cache.sqlite"
    manifest = sl_generate(
        prompts,
        tmp_path / "ray.jsonl",
        tiny_model_dir,
        "--executor",
        "ray",
        "--workers",
        "2",
        cache=cache,
    )

    for name in ("{}.jsonl", "{}.sft.jsonl"):
        one, fanned = (tmp_path / name.format(n) for n in ("one", "ray"))
        assert one.read_bytes() == fanned.read_bytes(), name
    traces = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [t["id"] for t in traces[:10]] == [f"r{i}" for i in range(10)]  # written in input order
    assert all(len(t["rounds"]) == 2 for t in traces[:10])
    assert manifest["executor"] == {
        "kind": "ray",
        "address": "local",
        "workers": 2,
        "cpus_per_worker": 1,
        "gpus_per_worker": 0.0,
    }
    assert manifest["tokens"]["cache_hits"] == 0 and manifest["tokens"]["completion_tokens"] > 0

    # The cache lives in the driver and its keys do not depend on the executor: a rerun, or a
    # run resumed in one process, pays for nothing new.
    again = sl_generate(prompts, tmp_path / "again.jsonl", tiny_model_dir, cache=cache)
    assert again["tokens"]["cache_hits"] == again["tokens"]["calls"] == manifest["tokens"]["calls"]
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "ray.jsonl").read_bytes()


def test_ray_choice_logprobs_match_local(ray_local, tiny_model_dir):
    from constitutional.backends.local import LocalBackend
    from constitutional.scale.ray_backend import RayBackend

    prompts = [[{"role": "user", "content": f"Is {i} even? Answer A or B."}] for i in range(7)]
    local = LocalBackend(str(tiny_model_dir), batch_size=3)
    fanned = RayBackend("local", str(tiny_model_dir), {"batch_size": 3}, workers=2)
    try:
        assert fanned.fingerprint() == local.fingerprint()
        assert fanned.choice_logprobs(prompts, ["A", "B"]) == local.choice_logprobs(
            prompts, ["A", "B"]
        )
        # the workers' token counts travel back with their rows, in prompt order
        assert (
            fanned.choice_logprobs_with_usage(prompts, ["A", "B"])[1]
            == local.choice_logprobs_with_usage(prompts, ["A", "B"])[1]
        )
    finally:
        fanned.close()


def test_worker_errors_reach_the_user_as_themselves(ray_local, tmp_path):
    from constitutional.scale.ray_backend import RayBackend

    with pytest.raises(UserError, match="no such model"):
        RayBackend("local", str(tmp_path / "missing"), {"batch_size": 2}, workers=1)
    server = RayBackend(
        "openai", "m", {"base_url": "http://127.0.0.1:1/v1", "max_retries": 0}, workers=1
    )
    try:
        from constitutional.backends import GenerationRequest

        with pytest.raises(BackendError, match="127.0.0.1:1"):
            server.generate([GenerationRequest(prompt="hi", max_tokens=2)])
    finally:
        server.close()


def test_unreachable_ray_address_is_a_one_line_error(prompts, tiny_model_dir, tmp_path):
    out = tmp_path / "sl.jsonl"
    result = cai(
        "sl-cai",
        "generate",
        "--prompts",
        prompts,
        "--out",
        out,
        "--model",
        tiny_model_dir,
        "--executor",
        "ray",
        "--ray-address",
        "127.0.0.1:1",
        "--no-cache",
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cai: error: cannot reach the Ray cluster at 127.0.0.1:1" in result.stderr
    assert not out.exists() and not Path(f"{out}.manifest.json").exists()


@pytest.mark.parametrize("address", ["ray://", "host:notaport"])
def test_malformed_ray_address(address):
    with pytest.raises(UserError, match="is not host:port"):
        probe_address(address)


def test_unknown_executor_exits_2(prompts, tiny_model_dir, tmp_path):
    result = cai(
        "sl-cai",
        "generate",
        "--prompts",
        prompts,
        "--out",
        tmp_path / "o.jsonl",
        "--model",
        tiny_model_dir,
        "--executor",
        "dask",
        "--no-cache",
        timeout=120,
    )
    assert result.returncode == 2
    assert "cai: error: unknown executor 'dask'; choose one of local, ray" in result.stderr
