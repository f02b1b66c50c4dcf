"""`fedsynth audit`: independent re-derivation of every claim; tampering, lying and overspending fail."""

import json
import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsynth.common.audit.recheck import _entry_hash, _holds, audit_ledger, audit_run_dir, check_anchor
from fedsynth.client.cli import main
from fedsynth.common.ledger import Ledger
from fedsynth.common.privacy.accounting import Mechanism, calibrate_noise_multiplier, epsilon_of_history
from fedsynth.common.privacy.independent import dpa_rdp_epsilon, pld_epsilon

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


@pytest.mark.parametrize("epsilon,q,steps", [(1.0, 1024 / 6000, 118), (10.0, 1.0, 21)])
def test_the_default_accountant_spends_less_noise_and_its_claims_still_pass_the_audit(epsilon, q, steps):
    """Sites calibrate σ with the default accountant (PRV): it must need less noise than RDP for the same
    target, and its claim must not fall below the audit's PLD reference, or every default site would fail."""
    sigma = calibrate_noise_multiplier(epsilon, 1e-5, q, steps)
    assert sigma < 0.97 * calibrate_noise_multiplier(epsilon, 1e-5, q, steps, "rdp")
    mechanism = Mechanism(sigma, q, steps, 1.0)
    claimed = epsilon_of_history([mechanism], 1e-5)
    assert claimed <= epsilon and _holds(claimed, pld_epsilon([mechanism], 1e-5))


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

    pub.write_bytes(KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    out = tmp_path / "audit.json"
    assert main(["audit", str(path), "--public-key", str(pub), "--json", str(out),
                 "--report", str(tmp_path / "r")]) == 0
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
    rows = [{"site": "site-0", "accepted": True, "epsilon": epsilon_of_history([M1], 1e-5, "rdp"), "delta": 1e-5,
             "noise_multiplier": 1.2, "sample_rate": 0.05, "releases": 200, "clip_norm": 1.0, "accountant": "rdp"},
            {"site": "site-1", "accepted": True, "epsilon": eps / 3, "delta": 1e-5,  # understated upload claim
             "noise_multiplier": 2.0, "sample_rate": 0.1, "releases": 100, "clip_norm": 1.0, "accountant": "rdp"},
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


# ---- headers, schema, one release per run, anchors -------------------------------------------
TINY = Mechanism(1.0, 0.01, 10, 1.0)


def _tiny_ledger(path, runs=("a", "b")):
    ledger = Ledger.open(path, budget_epsilon=10.0, signer=KEY)
    for run in runs:
        ledger.spend(run, TINY, 1e-5, "rdp", {"epsilon": epsilon_of_history([TINY], 1e-5, "rdp")})
        ledger.record_release(run, "e" * 64)
    return ledger


def test_empty_ledger_fails(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"")
    audit = audit_ledger(path, KEY.public_key())
    assert not audit.ok and any("empty ledger" in p for p in audit.problems)
    assert not audit_ledger(path).ok


def test_ledger_without_header_fails(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _tiny_ledger(path, runs=("a",))
    headless = lambda entries: [{**e, "seq": i} for i, e in enumerate(entries[1:])]  # noqa: E731
    _rewrite(path, headless, key=KEY)  # re-signed, but no header
    problems = audit_ledger(path, KEY.public_key()).problems
    assert any("not the ledger header" in p for p in problems), problems


def test_rechained_without_the_key_fails_with_the_public_key(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _tiny_ledger(path)

    def forget_spends(entries):  # drop the spends (and their releases), renumber, raise the budget
        kept = [e for e in entries if e["kind"] == "open"]
        kept[0]["budget_epsilon"] = 1000.0
        return kept

    _rewrite(path, forget_spends)
    assert audit_ledger(path).ok  # without the key the rebuilt ledger is self-consistent
    audit = audit_ledger(path, KEY.public_key())
    assert not audit.ok and any("line 1 (seq 0): signature missing" in p for p in audit.problems), audit.problems


def test_unsigned_entry_appended_without_the_key_fails(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _tiny_ledger(path, runs=("a",))
    last = json.loads(path.read_text().splitlines()[-1])
    forged = {"seq": last["seq"] + 1, "prev": last["hash"], "kind": "release", "run_id": "a", "sha256": "d" * 64}
    forged["hash"] = _entry_hash(forged)
    with open(path, "a") as handle:
        handle.write(json.dumps(forged, sort_keys=True) + "\n")
    problems = audit_ledger(path, KEY.public_key()).problems
    assert any("(seq 3): signature missing" in p for p in problems), problems


def test_header_naming_another_key_fails(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _tiny_ledger(path, runs=())
    other = Ed25519PrivateKey.generate()
    _rewrite(path, lambda entries: entries, key=other)  # re-signed by another key, header still names the site's
    problems = audit_ledger(path, other.public_key()).problems
    assert problems == ["line 1: the ledger header names another site's public key"]


def _no_kind(entries):
    del entries[1]["kind"]
    return entries


def _fractional_steps(entries):
    entries[1]["mechanism"]["steps"] = 1.9
    return entries


def _bool_seq(entries):
    entries[1]["seq"] = True  # True == 1: a plain equality check with the expected seq lets it through
    return entries


def _missing_mechanism_field(entries):
    del entries[1]["mechanism"]["clip_norm"]
    return entries


def _string_epsilon(entries):
    entries[1]["epsilon"] = "0.1"
    return entries


def _header_without_delta(entries):
    del entries[0]["delta"]
    return entries


@pytest.mark.parametrize("damage", [_no_kind, _fractional_steps, _bool_seq, _missing_mechanism_field, _string_epsilon,
                                    _header_without_delta])
def test_schema_broken_entry_fails_and_never_crashes(tmp_path, damage):
    path = tmp_path / "ledger.jsonl"
    _tiny_ledger(path, runs=("a",))
    _rewrite(path, damage, key=KEY)  # signed by the site's key: only the schema is wrong
    line = 1 if damage is _header_without_delta else 2
    for key in (KEY.public_key(), None):
        problems = audit_ledger(path, key).problems
        assert any(p.startswith(f"line {line} ") and "malformed entry" in p for p in problems), problems


def test_second_release_of_a_run_fails(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _tiny_ledger(path, runs=("a",))
    _rewrite(path, lambda entries: entries + [{**entries[-1], "seq": 3, "sha256": "d" * 64}], key=KEY)
    problems = audit_ledger(path, KEY.public_key()).problems
    assert any("seq 3 (run a): a second release" in p for p in problems), problems


def test_release_without_a_spend_fails(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _tiny_ledger(path, runs=())
    orphan = {"seq": 1, "kind": "release", "run_id": "x", "sha256": "d" * 64}
    _rewrite(path, lambda entries: entries + [orphan], key=KEY)
    problems = audit_ledger(path, KEY.public_key()).problems
    assert any("released with no spend" in p for p in problems), problems


def test_truncation_at_a_line_boundary_is_caught_by_the_anchor(tmp_path):
    path = tmp_path / "ledger.jsonl"
    anchor = _tiny_ledger(path).head()  # (4, hash): what the server saw with the last upload
    assert check_anchor(Ledger(path).entries(), *anchor) is None
    assert audit_ledger(path, KEY.public_key(), anchor=anchor).ok
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))  # the second run's spend and release cut off: every line still verifies
    assert audit_ledger(path, KEY.public_key()).ok
    audit = audit_ledger(path, KEY.public_key(), anchor=anchor)
    assert audit.problems == [f"rolled back: the server saw entry 4 with hash {anchor[1][:12]}…, "
                              "the ledger has only 3 entries"]


def test_fork_after_the_anchor_is_caught(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = _tiny_ledger(path, runs=("a",))
    anchor = ledger.head()
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))  # cut the release...
    ledger.record_release("a", "d" * 64)  # ...and write another one, signed by the site itself
    audit = audit_ledger(path, KEY.public_key(), anchor=anchor)
    assert audit.problems == ["forked: entry 2's hash differs from the one the server saw "
                              f"({anchor[1][:12]}…)"]
