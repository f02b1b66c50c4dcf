"""`fedsynth audit`: independent re-derivation of every claim; tampering, lying and overspending fail."""

import json
import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.audit.recheck import _entry_hash, audit_ledger, audit_run_dir
from common.cli import main
from common.ledger import Ledger
from common.privacy.accounting import Mechanism, epsilon_of_history
from common.privacy.independent import dpa_rdp_epsilon, pld_epsilon

KEY = Ed25519PrivateKey.generate()
M1, M2 = Mechanism(1.2, 0.05, 200, 1.0), Mechanism(2.0, 0.1, 100, 1.0)


def _signed_ledger(path, *mechanisms, budget=10.0):
    ledger = Ledger.open(path, budget_epsilon=budget, signer=KEY)
    for i, m in enumerate(mechanisms):
        eps = epsilon_of_history([m], 1e-5, "rdp")
        ledger.spend(f"run-{i}", m, 1e-5, "rdp", {"epsilon": eps})
        ledger.record_release(f"run-{i}", "0" * 64)
    return ledger


def _rewrite(path, edit, key=None):
    """An attacker who edits entries and recomputes the whole hash chain (optionally re-signing)."""
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries = edit(entries)
    previous = "0" * 64
    for entry in entries:
        entry["prev"] = previous
        entry["hash"] = _entry_hash(entry)
        entry.pop("signature", None)
        if key is not None:
            entry["signature"] = key.sign(entry["hash"].encode()).hex()
        previous = entry["hash"]
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def test_independent_accountants_agree_with_opacus_where_they_should():
    # PLD and PRV are both near-tight: within 2 %; RDP (either library) is a looser upper bound
    pld, prv = pld_epsilon([M1], 1e-5), epsilon_of_history([M1], 1e-5, "prv")
    assert pld == pytest.approx(prv, rel=0.02)
    assert dpa_rdp_epsilon([M1], 1e-5) >= pld and epsilon_of_history([M1], 1e-5, "rdp") >= pld
    # composition and subsampling really enter: two mechanisms cost more than one, q=1 costs more than q<1
    assert pld_epsilon([M1, M2], 1e-5) > pld
    assert pld_epsilon([Mechanism(1.2, 1.0, 200, 1.0)], 1e-5) > 5 * pld
    assert math.isinf(pld_epsilon([Mechanism(0.0, 0.05, 10, 1.0)], 1e-5))


def test_honest_signed_ledger_passes(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _signed_ledger(path, M1, M2)
    audit = audit_ledger(path, KEY.public_key())
    assert audit.ok, audit.problems
    assert audit.signatures == "5 of 5 verified"
    assert [r.run_id for r in audit.releases] == ["run-0", "run-1"]
    assert audit.recomputed_total["pld"] == pytest.approx(pld_epsilon([M1, M2], 1e-5))
    assert audit.remaining_epsilon == pytest.approx(10.0 - audit.recomputed_total["pld"])
    assert audit.releases[1].site_epsilon_after == pytest.approx(audit.recomputed_total["pld"])


def test_claim_below_recomputed_fails_even_with_a_rebuilt_chain(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _signed_ledger(path, M1)

    def understate(entries):
        entries[1]["epsilon"] = entries[1]["epsilon"] / 2
        return entries

    _rewrite(path, understate)  # chain consistent again, but not signed by the site
    with_key = audit_ledger(path, KEY.public_key())
    assert any("signature missing" in p for p in with_key.problems)
    assert any("claimed ε=" in p and "below" in p for p in with_key.problems)
    without_key = audit_ledger(path)
    assert [p for p in without_key.problems if "below" in p], "the ε check must not depend on signatures"


def test_entry_signed_by_another_key_is_reported(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _signed_ledger(path, M1)
    _rewrite(path, lambda entries: entries, key=Ed25519PrivateKey.generate())
    problems = audit_ledger(path, KEY.public_key()).problems
    assert sum("signature invalid" in p for p in problems) == 3


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda lines: lines[:1] + lines[2:], "line 2: seq 2, expected 1 (entries removed)"),
        (lambda lines: [lines[0], lines[2], lines[1]] + lines[3:], "line 2: seq 2, expected 1"),
        (lambda lines: lines[:1] + [lines[1].replace('"steps": 200', '"steps": 20')] + lines[2:],
         "line 2 (seq 1): changed after it was written"),
    ],
)
def test_removed_reordered_changed_entries_are_reported_with_position(tmp_path, edit, expected):
    path = tmp_path / "ledger.jsonl"
    _signed_ledger(path, M1, M2)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))
    problems = audit_ledger(path, KEY.public_key()).problems
    assert any(expected in p for p in problems), problems


def test_site_over_budget_fails(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _signed_ledger(path, M1, budget=1.0e9)

    def shrink_budget(entries):  # a rebuilt, re-signed ledger whose budget is below what it spent
        entries[0]["budget_epsilon"] = 0.5
        return entries

    _rewrite(path, shrink_budget, key=KEY)
    audit = audit_ledger(path, KEY.public_key())
    assert any(p.startswith("over budget") for p in audit.problems) and audit.remaining_epsilon == 0.0


def test_cli_exit_status_json_and_report(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _signed_ledger(path, M1, M2)
    pub = tmp_path / "site.pub"
    from cryptography.hazmat.primitives import serialization

    pub.write_bytes(KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    out = tmp_path / "audit.json"
    assert main(["audit", str(path), "--public-key", str(pub), "--json", str(out), "--report", str(tmp_path / "r")]) == 0
    result = json.loads(out.read_text())
    assert result["ok"] and result["sites"][0]["releases"][0]["recomputed"]["pld"] > 0
    assert (tmp_path / "r" / "epsilon_over_time.png").stat().st_size > 1000
    assert "every claim holds" in (tmp_path / "r" / "audit.md").read_text()

    _rewrite(path, lambda entries: [{**e, "epsilon": 0.01} if e["kind"] == "spend" else e for e in entries])
    assert main(["audit", str(path), "--json", str(out), "--report", str(tmp_path / "r")]) == 1
    assert not json.loads(out.read_text())["ok"]


def test_run_dir_audit_checks_uploads_and_local_ledgers(tmp_path):
    sites_dir = tmp_path / "sites"
    _signed_ledger(sites_dir / "site-0" / "ledger.jsonl", M1)
    eps = epsilon_of_history([M2], 1e-5, "rdp")
    rows = [{"site": "site-0", "accepted": True, "epsilon": epsilon_of_history([M1], 1e-5), "delta": 1e-5,
             "noise_multiplier": 1.2, "sample_rate": 0.05, "steps": 200, "clip_norm": 1.0, "accountant": "rdp"},
            {"site": "site-1", "accepted": True, "epsilon": eps / 3, "delta": 1e-5,  # understated upload claim
             "noise_multiplier": 2.0, "sample_rate": 0.1, "steps": 100, "clip_norm": 1.0, "accountant": "rdp"},
            {"site": "site-2", "accepted": False, "reason": "signature"}]
    run = tmp_path / "run"
    run.mkdir()
    (run / "privacy_report.json").write_text(json.dumps({"sites": rows, "config": {"sites-dir": str(sites_dir),
                                                                                  "keys-dir": str(tmp_path / "k")}}))
    audits, problems = audit_run_dir(run)
    by_site = {a.site: a for a in audits}
    assert set(by_site) == {"site-0", "site-1"} and not problems
    assert by_site["site-0"].ok and by_site["site-0"].releases[0].run_id == "run-0"  # from its ledger
    assert not by_site["site-1"].ok and "upload claim" in by_site["site-1"].problems[0]
