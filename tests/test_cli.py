"""`fedsynth distill` and `fedsynth evaluate` as a user runs them, on the real MNIST subset."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import torch

REQUIRED_CLAIM = {"epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "clip_norm", "accountant"}


def fedsynth(*args, home):
    env = {**os.environ, "FEDSYNTH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "common.cli", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_distill_then_evaluate_end_to_end(tmp_path):
    out = tmp_path / "set"
    run = fedsynth("distill", "--dataset", "mnist5k", "--ipc", 2, "--epsilon", 4, "--steps", 2, "--inner-steps", 2,
                   "--width", 8, "--limit", 1000, "--seed", 3, "--out", out, home=tmp_path / "home")
    assert run.returncode == 0, run.stderr
    tensors = load_file(str(out / "synthetic.safetensors"))
    assert tensors["images"].dtype == torch.float32 and tensors["images"].shape == (20, 1, 28, 28)
    assert tensors["labels"].dtype == torch.int64 and tensors["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    assert 0.0 <= tensors["images"].min() and tensors["images"].max() <= 1.0
    claim = json.loads((out / "claim.json").read_text())
    assert REQUIRED_CLAIM <= set(claim) and claim["epsilon"] <= 4 and claim["steps"] == 4 and claim["seed"] == 3
    assert (out / "synthetic.png").read_bytes()[:4] == b"\x89PNG"
    ledger = (tmp_path / "home" / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in ledger] == ["open", "spend", "release"]

    evaluation = fedsynth("evaluate", out / "synthetic.safetensors", "--dataset", "mnist5k", "--epochs", 3, "--width", 16,
                          "--json", tmp_path / "eval.json", home=tmp_path / "home")
    assert evaluation.returncode == 0, evaluation.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert len(result["accuracies"]) == 3 and 0.0 <= result["accuracy_mean"] <= 1.0
    assert result["accuracy_std"] >= 0.0 and "accuracy" in evaluation.stdout


def test_evaluate_trains_a_pool_file_as_the_server_did_unless_told_uniform(tmp_path, tiny_mnist):
    """A server's pool file keeps per-image weights; `evaluate` uses them (only class 0 weighs here: ≈ 10 %)."""
    from safetensors.torch import save_file

    pool = tmp_path / "synthetic_pool.safetensors"
    save_file({"images": tiny_mnist.images.contiguous(), "labels": tiny_mnist.labels.contiguous(),
               "weights": (tiny_mnist.labels == 0).float()}, str(pool))
    results = {}
    for extra in ([], ["--uniform"]):
        run = fedsynth("evaluate", pool, "--dataset", "mnist5k", "--epochs", 15, "--width", 16, "--seeds", 1,
                       "--json", tmp_path / "eval.json", "--quiet", *extra, home=tmp_path / "home")
        assert run.returncode == 0, run.stderr
        results[bool(extra)] = json.loads((tmp_path / "eval.json").read_text())
    assert results[False]["weighted"] is True and results[False]["accuracy_mean"] < 0.2
    assert results[True]["weighted"] is False and results[True]["accuracy_mean"] > 0.5


def test_bad_input_is_a_clear_error_with_nonzero_exit(tmp_path):
    run = fedsynth("distill", "--dataset", "mnist5k", "--epsilon", 0, "--out", tmp_path / "x", home=tmp_path / "home")
    assert run.returncode == 2 and "epsilon must be > 0" in run.stderr and "Traceback" not in run.stderr
    run = fedsynth("distill", "--data-dir", tmp_path / "missing", "--out", tmp_path / "x", home=tmp_path / "home")
    assert run.returncode == 2 and "does not exist" in run.stderr
    assert not (tmp_path / "x").exists()
