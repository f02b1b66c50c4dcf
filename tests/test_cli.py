"""`fedsynth distill` and `fedsynth evaluate` as a user runs them, on the real MNIST subset."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import torch

REQUIRED_CLAIM = {"epsilon", "delta", "noise_multiplier", "sample_rate", "releases", "clip_norm", "accountant"}


def fedsynth(*args, home):
    env = {**os.environ, "FEDSYNTH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "fedsynth.client.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.mark.slow
def test_distill_then_evaluate_end_to_end(tmp_path):
    out = tmp_path / "set"
    run = fedsynth("distill", "--dataset", "mnist5k", "--front-end", "none", "--ipc", 2, "--epsilon", 4, "--steps", 2,
                   "--inner-steps", 2,
                   "--width", 8, "--limit", 1000, "--seed", 3, "--out", out, home=tmp_path / "home")
    assert run.returncode == 0, run.stderr
    tensors = load_file(str(out / "synthetic.safetensors"))
    assert tensors["images"].dtype == torch.float32 and tensors["images"].shape == (20, 1, 28, 28)
    assert (tensors["labels"].dtype == torch.int64
            and tensors["labels"].tolist() == [c for c in range(10) for _ in range(2)])
    assert 0.0 <= tensors["images"].min() and tensors["images"].max() <= 1.0
    claim = json.loads((out / "claim.json").read_text())
    assert REQUIRED_CLAIM <= set(claim) and claim["epsilon"] <= 4 and claim["releases"] == 4 and claim["seed"] == 3
    assert (out / "synthetic.png").read_bytes()[:4] == b"\x89PNG"
    ledger = (tmp_path / "home" / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in ledger] == ["open", "spend", "release"]

    evaluation = fedsynth("evaluate", out / "synthetic.safetensors", "--dataset", "mnist5k", "--epochs", 3,
                          "--width", 16, "--json", tmp_path / "eval.json", home=tmp_path / "home")
    assert evaluation.returncode == 0, evaluation.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert len(result["accuracies"]) == 3 and 0.0 <= result["accuracy_mean"] <= 1.0
    assert result["accuracy_std"] >= 0.0 and "accuracy" in evaluation.stdout


@pytest.mark.slow
def test_distill_on_the_scatter_front_end_then_evaluate_with_the_servers_head(tmp_path):
    out = tmp_path / "set"
    run = fedsynth("distill", "--dataset", "mnist5k", "--ipc", 2, "--epsilon", 4, "--head-epochs", 2,
                   "--synthesis-steps", 5, "--limit", 1000, "--out", out, home=tmp_path / "home")
    assert run.returncode == 0, run.stderr
    tensors = load_file(str(out / "synthetic.safetensors"))
    assert tensors["soft_labels"].shape == (20, 10)
    claim = json.loads((out / "claim.json").read_text())
    assert claim["front_end"] == "scatter" and claim["soft_labels"] is True and claim["epsilon"] <= 4
    evaluation = fedsynth("evaluate", out, "--dataset", "mnist5k", "--json", tmp_path / "eval.json",
                          home=tmp_path / "home")
    assert evaluation.returncode == 0, evaluation.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert "linear head on the scatter front end" in evaluation.stdout and result["accuracy_mean"] > 0.3
    cnn = fedsynth("evaluate", out, "--dataset", "mnist5k", "--model", "cnn", "--seeds", 2, "--json",
                   tmp_path / "cnn.json", home=tmp_path / "home")
    assert cnn.returncode == 0, cnn.stderr
    result = json.loads((tmp_path / "cnn.json").read_text())
    assert "2 CNN heads on the scatter front end" in cnn.stdout and len(result["accuracies"]) == 2
    assert result["train_config"]["model"] == "scatter + CNN head" and result["train_config"]["soft_labels"]


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
    assert (run.returncode == 2 and "epsilon must be a number in (0.0, inf]" in run.stderr
            and "Traceback" not in run.stderr)
    run = fedsynth("distill", "--data-dir", tmp_path / "missing", "--out", tmp_path / "x", home=tmp_path / "home")
    assert run.returncode == 2 and "does not exist" in run.stderr
    assert not (tmp_path / "x").exists()


def _bad_set(folder, images, labels):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"images": images, "labels": labels}, str(folder / "synthetic.safetensors"))
    return folder


def _refusals(tmp_path):
    """(arguments, what the one line says) for refusals a user can run into."""
    d = ["distill", "--dataset", "mnist5k", "--front-end", "none", "--limit", 200, "--out", tmp_path / "o"]
    s = ["distill", "--dataset", "mnist5k", "--limit", 200, "--out", tmp_path / "o"]  # the default engine
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "privacy_report.json").write_text('{"sites": {"a": 1}, "config": []}')
    return [
        (d + ["--clip-norm", "nan"], "--clip-norm"),
        (d + ["--clip-norm", "inf"], "clip_norm must be a finite number"),
        (d + ["--sample-rate", "0"], "sample_rate"),
        (d + ["--lr-images", "nan"], "--lr-images"),
        (d + ["--batch-per-class", "-5"], "batch_per_class"),
        (d + ["--steps", "100000000"], "iterations"),
        (d + ["--depth", "9"], "cannot run on"),
        (s + ["--head-epochs", "0"], "head_epochs must be"),
        (s + ["--head-lr", "fast"], "--head-lr"),
        (d + ["--head-epochs", "auto"], "--head-epochs applies only to a front end"),
        (s + ["--temperature", "nan"], "--temperature"),
        (s + ["--steps", "5"], "--steps applies only to --front-end none"),  # would be ignored by the head's run
        (d + ["--head-lr", "1"], "--head-lr applies only to a front end"),
        (d + ["--device", "cuda:7"], "cannot run"),
        (d + ["--signing-key", tmp_path], "is not a regular file"),
        (["distill", "--dataset", "mnist5k", "--limit", 200, "--out", tmp_path / "a-file" / "o"], "cannot create"),
        (["evaluate", _bad_set(tmp_path / "nan", torch.full((10, 1, 28, 28), float("nan")), torch.arange(10)),
          "--dataset", "mnist5k"], "NaN"),
        (["evaluate", _bad_set(tmp_path / "short", torch.rand(10, 1, 28, 28), torch.arange(3)), "--dataset",
          "mnist5k"], "(3,) labels for 10 images"),
        (["evaluate", _bad_set(tmp_path / "none", torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)),
          "--dataset", "mnist5k"], "no images"),
        (["evaluate", tmp_path / "garbage.safetensors", "--dataset", "mnist5k"], "not a readable safetensors"),
        (["evaluate", _bad_set(tmp_path / "fine", torch.rand(10, 1, 28, 28), torch.arange(10)), "--dataset",
          "mnist5k", "--model", "cnn", "--seeds", "0"], "at least one seed"),
        (["evaluate", tmp_path / "nowhere", "--dataset", "mnist5k"], "no synthetic set"),
        (["audit", tmp_path / "nowhere.jsonl"], "does not exist"),
        (["audit", tmp_path / "fifo.jsonl"], "not a regular file"),
        (["audit", tmp_path / "report"], "not a fedsynth privacy report"),
        (d + ["--ledger", tmp_path / "fifo.jsonl"], "not a regular file"),
        (d + ["--signing-key", tmp_path / "fifo.jsonl"], "not a regular file"),
        (d + ["--limit", "0"], "must be at least 1"),
        (d + ["--limit", "-5"], "must be at least 1"),
        (d + ["--epsilon", "nan"], "--epsilon"),
    ]


@pytest.mark.timeout(300)
def test_every_refusal_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from fedsynth.client.cli import main

    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path / "home"))
    for args, says in _refusals(tmp_path):
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:  # argparse's own refusals exit from the parser
            code = stop.code
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith(f"fedsynth {args[0]}: error:") and says in err, (args, err)
    assert not (tmp_path / "home" / "ledger.jsonl").exists() or \
        [json.loads(line)["kind"] for line in (tmp_path / "home" / "ledger.jsonl").read_text().splitlines()] == ["open"]


def test_audit_fails_an_empty_ledger(tmp_path, capsys):
    from fedsynth.client.cli import main

    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert main(["audit", str(tmp_path / "empty.jsonl"), "--report", str(tmp_path / "report")]) == 1
    assert "AUDIT FAILED" in capsys.readouterr().out
