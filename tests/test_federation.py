"""One federated round on the real Flower simulation engine (private SuperLink, loopback, no downloads)."""

import json
import os
import re
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from fedsynth.client.client_app import site_seed
from fedsynth.common.ledger import Ledger
from fedsynth.common.privacy.accounting import Mechanism
from fedsynth.common.signing import generate_signing_key, load_private_key
from fedsynth.common.simulation import run_simulation
from fedsynth.server.pool import choose_weighting
from helpers import TWO_AT_ONCE

ROOT = Path(__file__).resolve().parents[1]
TINY = ('dataset="mnist5k" front-end="none" steps=6 inner-steps=2 width=8 ipc=2 eval-epochs=40 eval-width=32 '
        'connect-timeout=30 timeout=600 epsilon=8.0')
ARTIFACTS = ("metrics.json", "privacy_report.json", "privacy_report.md", "global_model.safetensors",
             "synthetic_pool.safetensors", "synthetic_pool.png")
FLOWER_PROCESS = re.compile(r"flower-superlink|flower-superexec|flwr-simulation|raylet|gcs_server")


def _leftovers(home: Path, wait: float = 0.0) -> list[str]:
    """Flower and Ray processes of this test's run still running (after waiting up to `wait` s for them to
    finish exiting). A process is this run's when it inherited the test's FEDSYNTH_HOME, so runs of other
    tests at the same time (pytest-xdist) are not counted.

    Zombies are left out: they have exited, and reaping an orphan is init's job (a container's PID 1
    may never do it), not something the simulation can leave running.
    """
    deadline = time.monotonic() + wait
    while True:
        running = ((proc.info["pid"], " ".join(proc.info["cmdline"] or []), proc.info["environ"] or {})
                   for proc in psutil.process_iter(["pid", "cmdline", "status", "environ"])  # None: not readable
                   if proc.info["status"] != psutil.STATUS_ZOMBIE)
        out = sorted(f"{pid} {cmdline}" for pid, cmdline, environ in running
                     if FLOWER_PROCESS.search(cmdline) and environ.get("FEDSYNTH_HOME") == str(home))
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(1.0)


@pytest.mark.slow
def test_round_completes_with_the_sites_that_can_answer(tmp_path, monkeypatch):
    home = tmp_path / "sites-home"
    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path / "home"))
    # site-1 has almost spent its budget; site-2's ledger is corrupt (the engine stops with an error)
    key = generate_signing_key(tmp_path / "keys" / "site-1.pem", tmp_path / "keys" / "site-1.pub") and \
        load_private_key(tmp_path / "keys" / "site-1.pem")
    spent = Ledger.open(home / "site-1" / "ledger.jsonl", budget_epsilon=1.0, signer=key)
    spent.spend("earlier", Mechanism(2.0, 0.01, 100, 1.0), 1e-5, "rdp", {})
    corrupt = home / "site-2" / "ledger.jsonl"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text("{not a ledger}\n")

    out = tmp_path / "out"
    rc = run_simulation(ROOT, 4, TINY + f' batch-per-class=48 pool-weighting="matched" min-sites=2 expected-sites=4 '
                        f'output-dir="{out}" keys-dir="{tmp_path / "keys"}" sites-dir="{home}" '
                        f'anchors-file="{tmp_path / "anchors.json"}"',
                        timeout=900, federation_config=TWO_AT_ONCE)
    assert rc == 0
    for name in ARTIFACTS:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    by_site = {s["site"]: s for s in metrics["sites"]}
    assert by_site["site-0"]["accepted"] and by_site["site-3"]["accepted"]
    assert not by_site["site-1"]["accepted"] and "budget exhausted" in by_site["site-1"]["reason"]
    # site-2's damaged ledger is a refusal (one line), not a crash
    assert not by_site["site-2"]["accepted"] and "site refused" in by_site["site-2"]["reason"]
    assert "LedgerCorrupt" not in by_site["site-2"]["reason"] and "Traceback" not in by_site["site-2"]["reason"]
    assert by_site["site-0"]["epsilon"] <= 8.0 and by_site["site-0"]["delta"] == 1e-5
    # the run config's batch-per-class reaches the site: q = 48 × 10 classes / 1,000 records (a quarter of
    # the subset's 4,000 training images); the default 64 would give 0.64
    assert by_site["site-0"]["sample_rate"] == pytest.approx(480 / 1000, rel=0.05)
    # each site distils from its own public seed (one shared seed made similar sites distil near-copies)
    assert by_site["site-0"]["seed"] == site_seed(0, "site-0") != by_site["site-3"]["seed"] == site_seed(0, "site-3")
    assert metrics["accuracy"] > 0.2  # chance is 0.1
    # every accepted site sent its per-class release signal and release dimension, so the server weighed the pool
    assert metrics["pool_weighting"] == "matched" and len(by_site["site-0"]["class_signal"]) == 10
    assert by_site["site-0"]["release_dimension"] == by_site["site-3"]["release_dimension"] > 0
    assert metrics["pool_weighting_asked"] == "matched" and metrics["pool_run_snr"] >= 0.0  # what `auto` would read
    pool = load_file(str(out / "synthetic_pool.safetensors"))
    assert pool["images"].shape == (2 * 2 * 10, 1, 28, 28)
    assert pool["weights"].shape == (2 * 2 * 10,) and pool["weights"].mean() == pytest.approx(1.0, rel=1e-5)
    assert "| site-1 |" in (out / "privacy_report.md").read_text()
    assert _leftovers(tmp_path / "home", wait=30) == []  # nothing left running


@pytest.mark.slow
def test_a_scatter_round_pools_images_with_soft_labels_and_combines_the_sites_heads(tmp_path, monkeypatch):
    """The front-end engine through a real round: soft labels on the wire, checked, pooled, fitted."""
    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    scatter = TINY.replace('front-end="none"', 'front-end="scatter"')
    rc = run_simulation(ROOT, 2, scatter + ' head-epochs=2.0 head-batch=200.0 synthesis-steps=5 '
                        f'min-sites=2 expected-sites=2 output-dir="{out}" keys-dir="{tmp_path / "keys"}" '
                        f'sites-dir="{tmp_path / "sites"}" anchors-file="{tmp_path / "anchors.json"}"', timeout=900,
                        federation_config=TWO_AT_ONCE)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["front_end"] == "scatter" and metrics["sites_accepted"] == 2
    assert metrics["train_config"]["model"] == "scatter + ridge head"
    # every site released its noisy class counts, so the sites' heads are joined by the gated vote, and the
    # round also reports the other three ways of joining them
    assert metrics["aggregation"] == "gated"
    assert all(0.0 <= metrics[f"{other}_accuracy"] <= 1.0 for other in ("vote", "consensus", "union"))
    assert all(s["accepted"] for s in metrics["sites"])
    assert metrics["accuracy"] > 0.3  # chance is 0.1
    pool = load_file(str(out / "synthetic_pool.safetensors"))
    assert pool["soft_labels"].shape == (2 * 2 * 10, 10)
    assert torch.allclose(pool["soft_labels"].sum(1), torch.ones(40), atol=1e-4)
    # the pool file holds what refits the round's head: `fedsynth evaluate` on it reports the round's accuracy
    assert pool["sites"].tolist() == [0] * 20 + [1] * 20 and pool["class_counts"].shape == (2, 10)
    assert pool["temperatures"].tolist() == [4.0, 4.0]
    from fedsynth.client.cli import main

    assert main(["evaluate", str(out / "synthetic_pool.safetensors"), "--dataset", "mnist5k", "--json",
                 str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["aggregation"] == "gated"  # the rule the pool file records
    assert evaluated["accuracy_mean"] == pytest.approx(metrics["accuracy"], abs=1e-9)


@pytest.mark.slow
# the other unknown values are refused by the same check: tests/server/test_round_settings.py
@pytest.mark.parametrize("setting,reason", [("min-sites=3", "min-sites=3"),
                                            ('front-end="wavelets"', "unknown front-end 'wavelets'")])
def test_round_that_cannot_complete_fails_with_a_clear_report_before_sites_spend(tmp_path, monkeypatch, setting,
                                                                                  reason):
    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    tiny = TINY.replace('front-end="none"', setting) if setting.startswith("front-end") else f"{TINY} {setting}"
    rc = run_simulation(ROOT, 2, tiny + f' expected-sites=2 output-dir="{out}" '
                        f'keys-dir="{tmp_path / "keys"}" sites-dir="{tmp_path / "sites"}" '
                        f'anchors-file="{tmp_path / "a.json"}"',
                        timeout=600)
    assert rc != 0  # the wrapper reports the failed run, although `flwr run --stream` itself exits 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and reason in metrics["reason"]
    assert not list((tmp_path / "sites").glob("*/ledger.jsonl"))  # no site was asked, so none spent


@pytest.mark.slow
def test_a_site_that_answers_too_late_is_left_out_and_the_round_completes(tmp_path, monkeypatch, app_with_faults):
    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path / "home"))
    app = app_with_faults(tmp_path, "hang-partition = -1\nhang-seconds = 0\n")
    out = tmp_path / "out"
    started = time.monotonic()
    # site-1 answers only after 150 s, the server waits 120 s; one CPU per site so that two run at once
    # (the late site holds one worker, the others use the other). Flower's simulation runtime ends only
    # once the late site's call returns, so the hang sets this test's length.
    late = TINY.replace("timeout=600", "timeout=120") + " hang-partition=1 hang-seconds=150"
    rc = run_simulation(app, 4, late + f' min-sites=2 expected-sites=4 output-dir="{out}" '
                        f'keys-dir="{tmp_path / "keys"}" sites-dir="{tmp_path / "sites"}" '
                        f'anchors-file="{tmp_path / "a.json"}"', timeout=900,
                        federation_config=TWO_AT_ONCE)
    assert rc == 0 and time.monotonic() - started < 850
    metrics = json.loads((out / "metrics.json").read_text())
    timed_out = [s for s in metrics["sites"] if s["reason"] == "no reply before the timeout"]
    assert len(timed_out) == 1 and not timed_out[0]["accepted"]
    assert metrics["sites_accepted"] == 3 and metrics["status"] == "completed"
    # the app's default weighting, resolved by the recorded median run SNR
    assert metrics["pool_weighting_asked"] == "auto"
    assert metrics["pool_weighting"] == choose_weighting("auto", metrics["pool_run_snr"])
    assert _leftovers(tmp_path / "home", wait=30) == []  # the late site's worker was stopped too


HOSTILE_REASONS = {  # what each crafted reply of tests/deploy_support/faulty_client_app.py must be rejected for
    "nan": "NaN is not a JSON number", "deep": "not strict JSON (RecursionError)",
    "huge-int": "not strict JSON (ValueError)", "string-epsilon": "epsilon must be a number",
    "fractional-releases": "releases must be an integer", "huge-signal": "class_signal[] must lie in",
    "refusal-without-site": "site refused: no", "refusal-wrong-type": "refusal record of the wrong type",
    "forged-row": "site refused: x /", "path-name": "site name must match", "unregistered-key": "",
    "oversized": "size: images", "wrong-records": "wrong types", "float-images": "images must be uint8",
    "crash": "site error",
}


@pytest.mark.slow
def test_hostile_replies_are_rejected_and_the_honest_sites_round_completes(tmp_path, monkeypatch, app_with_faults):
    """Two honest sites and one site per crafted reply: every crafted reply is a rejection with its reason,
    the report keeps one line per site, and the round completes with the honest sites' sets."""
    monkeypatch.setenv("FEDSYNTH_HOME", str(tmp_path / "home"))
    app = app_with_faults(tmp_path, "hostile-from = 2\n")
    out = tmp_path / "out"
    sites = 2 + len(HOSTILE_REASONS)
    rc = run_simulation(app, sites, TINY + f' min-sites=2 expected-sites={sites} output-dir="{out}" '
                        f'keys-dir="{tmp_path / "keys"}" sites-dir="{tmp_path / "sites"}" '
                        f'anchors-file="{tmp_path / "anchors.json"}"', timeout=900, federation_config=TWO_AT_ONCE)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["sites_accepted"] == 2
    accepted = sorted(s["site"] for s in metrics["sites"] if s["accepted"])
    assert accepted == ["site-0", "site-1"]
    rejected = [s["reason"] for s in metrics["sites"] if not s["accepted"]]
    assert len(rejected) == len(HOSTILE_REASONS)
    for kind, reason in HOSTILE_REASONS.items():
        assert any(reason in r for r in rejected), (kind, rejected)
    for row in metrics["sites"]:  # rejected rows carry no claim values
        assert row["accepted"] or "epsilon" not in row
    table = [line for line in (out / "privacy_report.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + sites  # header, rule, one line per site: no reply added or forged a row
    assert sum(" | yes | " in line for line in table) == 2
    anchors = json.loads((tmp_path / "anchors.json").read_text())["sites"]
    assert sorted(a["site"] for a in anchors.values()) == ["site-0", "site-1"]


@pytest.mark.slow
def test_sigterm_to_fedsynth_simulate_stops_every_flower_and_ray_process(tmp_path):
    """A scheduler's SIGTERM unwinds the run: the SuperLink, the simulation and Ray's processes go with it."""
    import signal
    import subprocess
    import sys

    config = (TINY.replace("steps=6 ", "steps=200 ") + f' min-sites=2 expected-sites=2 output-dir="{tmp_path / "out"}" '
              f'keys-dir="{tmp_path / "keys"}" sites-dir="{tmp_path / "sites"}" anchors-file="{tmp_path / "a.json"}"')
    run = subprocess.Popen([sys.executable, "-m", "fedsynth.client.cli", "simulate", "--sites", "2", "--run-config",
                            config], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "FEDSYNTH_HOME": str(tmp_path / "home")})
    seen = []
    for line in run.stdout:  # wait until the sites are distilling: every process of the stack is up
        seen.append(line)
        if "distilling" in line:
            break
    assert run.poll() is None, "the run ended before it could be interrupted:\n" + "".join(seen[-30:])
    running = " ".join(_leftovers(tmp_path / "home"))
    for part in ("flower-superlink", "flwr-simulation", "raylet", "gcs_server"):  # the filter sees the whole stack
        assert part in running, part
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 128 + signal.SIGTERM
    assert _leftovers(tmp_path / "home", wait=60) == []
