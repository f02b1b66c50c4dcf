"""The real deployment path over loopback: `flower-superlink` with TLS and SuperNode authentication,
sites registered with `flwr supernode register`, one `flower-supernode` per site with its own image
folder, ledger and signing key, runs submitted with `flwr run`. Everything stopped at the end."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from fedsynth.common.data import load_mnist5k
from fedsynth.common.deployment import CONNECTION
from deploy_support.image_folder import write_image_folder
from deploy_support.loopback import flwr, register_supernode, start_superlink, start_supernode, write_connection
from fedsynth.common.ledger import Ledger
from fedsynth.common.partition import site_dataset
from fedsynth.common.pki import KeyPlan, make_keys
from fedsynth.common.privacy.accounting import Mechanism
from fedsynth.common.signing import load_private_key
from fedsynth.common.simulation import run_status_code, stop_process_group
from conftest import write_app_with_faults

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SITES = ["site-0", "site-1", "site-2", "site-3", "site-4"]
TINY = ('dataset="mnist5k" front-end="none" steps=6 inner-steps=2 width=8 ipc=2 eval-epochs=40 eval-width=32 '
        'epsilon=4.0 timeout=600')


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Keys, a TLS + auth SuperLink, five registered sites with their own data, and SuperNodes running."""
    tmp = tmp_path_factory.mktemp("deploy")
    keys = tmp / "keys"
    make_keys(KeyPlan(keys, SITES + ["intruder"], ["localhost", "127.0.0.1"]))
    train = load_mnist5k(train=True)
    link = start_superlink(keys, tmp / "superlink")
    nodes: list[subprocess.Popen] = []
    try:
        for site in SITES:  # the intruder's key is made but never registered
            register_supernode(link, keys / "server" / "supernode-keys" / f"{site}.pub")
        for i, site in enumerate(SITES):
            home = tmp / "sites" / site
            data = write_image_folder(site_dataset(train, len(SITES), i, "iid", 0.5, 0), home / "images")
            config = {"site": site, "data-dir": str(data), "home": str(home),
                      "signing-key": str(keys / "sites" / site / "signing.pem")}
            if site == "site-1":
                config["fault"] = "replay"
            if site == "site-2":  # signs with another site's key
                config["signing-key"] = str(keys / "sites" / "site-0" / "signing.pem")
            if site == "site-3":
                config["fault"] = "tamper"
            if site == "site-4":  # nothing left of its budget
                key = load_private_key(keys / "sites" / site / "signing.pem")
                Ledger.open(home / "ledger.jsonl", budget_epsilon=1.0, signer=key).spend(
                    "earlier", Mechanism(2.0, 0.01, 100, 1.0), 1e-5, "rdp", {})
            nodes.append(start_supernode(link, keys / "sites" / site, config, home / "supernode.log"))
        yield {"link": link, "keys": keys, "tmp": tmp, "app": write_app_with_faults(tmp), "nodes": nodes}
    finally:
        for node in nodes:
            stop_process_group(node)
        stop_process_group(link.process)


def _submit(federation, out: Path, extra: str) -> int:
    link = federation["link"]
    config = (TINY + f' output-dir="{out}" keys-dir="{federation["keys"] / "server" / "site-keys"}" '
              f'anchors-file="{federation["tmp"] / "anchors.json"}" connect-timeout=120 {extra}')
    done = subprocess.run(["flwr", "run", str(federation["app"]), CONNECTION, "--run-config", config, "--stream"],
                          env=link.env, timeout=900)
    return done.returncode or run_status_code(link.env, CONNECTION)


def _by_site(out: Path) -> dict:
    return {s["site"]: s for s in json.loads((out / "metrics.json").read_text())["sites"]}


def test_round_over_tls_with_authenticated_sites(federation):
    out = federation["tmp"] / "round-1"
    assert _submit(federation, out, "expected-sites=5 min-sites=2") == 0
    for name in ("metrics.json", "privacy_report.json", "privacy_report.md", "global_model.safetensors",
                 "synthetic_pool.safetensors", "synthetic_pool.png"):
        assert (out / name).exists(), name
    sites = _by_site(out)
    assert sites["site-0"]["accepted"] and sites["site-1"]["accepted"], sites
    assert not sites["site-2"]["accepted"] and sites["site-2"]["reason"].startswith("signature: does not verify")
    assert not sites["site-3"]["accepted"] and "differ from the signed content hash" in sites["site-3"]["reason"]
    assert not sites["site-4"]["accepted"] and "budget exhausted" in sites["site-4"]["reason"]
    assert json.loads((out / "metrics.json").read_text())["sites_accepted"] == 2

    # a later round (both rounds fit in the default site budget of ε=10): site-1 replays its signed reply from
    # round 1 and is caught
    out2 = federation["tmp"] / "round-2"
    assert _submit(federation, out2, "expected-sites=5 min-sites=1") == 0
    sites = _by_site(out2)
    assert sites["site-0"]["accepted"]
    assert (not sites["site-1"]["accepted"]
            and sites["site-1"]["reason"].startswith("replay: signed for another run")), sites


def _wait_exit(process: subprocess.Popen, timeout: float) -> int | None:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_unregistered_supernode_is_refused(federation):
    link, keys = federation["link"], federation["keys"]
    log = federation["tmp"] / "intruder.log"
    node = start_supernode(link, keys / "sites" / "intruder", {"site": "intruder"}, log)
    try:
        code = _wait_exit(node, 60)
    finally:
        stop_process_group(node)
    assert code not in (None, 0), log.read_text()[-2000:]
    text = log.read_text()
    assert "Failed to activate SuperNode" in text and "CERTIFICATE_VERIFY_FAILED" not in text, text[-2000:]
    listed = json.loads(flwr(link, "supernode", "list", CONNECTION, "--format", "json").stdout)["nodes"]
    assert len(listed) == len(SITES)  # only the registered ones exist


def test_supernode_and_cli_without_the_ca_cannot_connect(federation, tmp_path):
    link, keys = federation["link"], federation["keys"]
    stranger = tmp_path / "other-ca"
    make_keys(KeyPlan(stranger, ["x"]))  # a CA the SuperLink's certificate was not issued by
    log = tmp_path / "no-ca.log"
    node = start_supernode(link, keys / "sites" / "site-0", {"site": "site-0"}, log,
                           root_certificates=stranger / "ca" / "ca.crt")
    try:
        code = _wait_exit(node, 60)
    finally:
        stop_process_group(node)
    assert code not in (None, 0)
    assert re.search(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", log.read_text(), re.I), \
        log.read_text()[-2000:]

    home = tmp_path / "cli-home"
    write_connection(home, link.port, stranger / "ca" / "ca.crt")
    env = {**link.env, "FLWR_HOME": str(home)}
    listing = subprocess.run(["flwr", "supernode", "list", CONNECTION], env=env, capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode != 0
