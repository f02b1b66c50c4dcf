import json

import pytest

from common.ledger import BudgetExceededError, Ledger, LedgerCorruptError, LedgerError
from common.privacy.accounting import Mechanism, epsilon_of_history

M = Mechanism(noise_multiplier=1.0, sample_rate=0.01, steps=1000, clip_norm=1.0)


def _spend(ledger, run_id, mech=M):
    return ledger.spend(run_id, mech, 1e-5, "rdp", {"note": "test"})


def test_spend_and_release_are_chained_and_composed(tmp_path):
    ledger = Ledger.open(tmp_path / "l.jsonl", budget_epsilon=100)
    _spend(ledger, "a")
    ledger.record_release("a", "f" * 64)
    _spend(ledger, "b")
    entries = ledger.entries()
    assert [e["kind"] for e in entries] == ["open", "spend", "release", "spend"]
    assert all(e["prev"] == p["hash"] for p, e in zip(entries, entries[1:]))
    assert ledger.spent_epsilon() == pytest.approx(epsilon_of_history([M, M], 1e-5))
    assert ledger.released("a") and not ledger.released("b")
    assert (tmp_path / "l.jsonl").stat().st_mode & 0o777 == 0o600


def test_budget_exhausted_is_refused_and_writes_nothing(tmp_path):
    one = epsilon_of_history([M], 1e-5)
    ledger = Ledger.open(tmp_path / "l.jsonl", budget_epsilon=1.1 * one)  # composition of two costs more than 1.1×
    _spend(ledger, "a")
    before = (tmp_path / "l.jsonl").read_bytes()
    with pytest.raises(BudgetExceededError, match="budget exhausted"):
        _spend(ledger, "b")
    assert (tmp_path / "l.jsonl").read_bytes() == before


def test_reopen_keeps_the_spend_and_the_budget(tmp_path):
    path = tmp_path / "l.jsonl"
    _spend(Ledger.open(path, budget_epsilon=5), "a")
    again = Ledger.open(path)  # a new process after a crash
    assert again.spend_for("a") is not None
    assert again.budget_epsilon() == 5
    with pytest.raises(LedgerError, match="cannot be changed"):
        Ledger.open(path, budget_epsilon=50)
    with pytest.raises(LedgerError, match="already has a spend"):
        _spend(again, "a")


def test_release_needs_a_spend(tmp_path):
    with pytest.raises(LedgerError, match="no spend entry"):
        Ledger.open(tmp_path / "l.jsonl").record_release("ghost", "0" * 64)


def _lines(path):
    return path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("damage", ["edit", "remove", "swap", "truncate", "garbage"])
def test_corruption_is_detected_and_never_reset(tmp_path, damage):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path, budget_epsilon=100)
    for run in "abc":
        _spend(ledger, run)
    lines = _lines(path)
    if damage == "edit":
        entry = json.loads(lines[1])
        entry["mechanism"]["noise_multiplier"] = 50.0  # pretend the spend was cheaper
        lines[1] = json.dumps(entry, sort_keys=True) + "\n"
    elif damage == "remove":
        del lines[2]
    elif damage == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif damage == "truncate":
        lines[-1] = lines[-1][:40]
    else:
        lines.insert(2, "not json\n")
    path.write_text("".join(lines))
    damaged = path.read_bytes()
    with pytest.raises(LedgerCorruptError):
        ledger.spent_epsilon()
    with pytest.raises(LedgerCorruptError):
        _spend(ledger, "d")
    with pytest.raises(LedgerCorruptError):
        Ledger.open(path)
    assert path.read_bytes() == damaged
