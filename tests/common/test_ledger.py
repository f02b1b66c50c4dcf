import json
import multiprocessing
import tempfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsynth.common.ledger import BudgetExceededError, Ledger, LedgerCorruptError, LedgerError, _entry_hash
from fedsynth.common.privacy.accounting import Mechanism, epsilon_of_history

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


# ---- hardening: creation, headers, signatures, schema ---------------------------------------
KEY = Ed25519PrivateKey.generate()
TINY = Mechanism(1.0, 0.01, 10, 1.0)


def _raw(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def _signed(path, runs="ab"):
    ledger = Ledger.open(path, budget_epsilon=5.0, signer=KEY)
    for run in runs:
        _spend(ledger, run, TINY)
        ledger.record_release(run, "e" * 64)
    return ledger


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_chain(path, entries, key=None, renumber=True):
    """What someone with write access but (unless `key`) without the site's key can produce: a consistent chain."""
    previous = "0" * 64
    for number, entry in enumerate(entries):
        if renumber:
            entry["seq"] = number
        entry["prev"] = previous
        entry.pop("signature", None)
        entry["hash"] = _entry_hash(entry)
        if key is not None:
            entry["signature"] = key.sign(entry["hash"].encode()).hex()
        previous = entry["hash"]
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def test_new_ledger_is_created_with_its_header_and_nothing_else(tmp_path):
    path = tmp_path / "site" / "l.jsonl"
    Ledger.open(path, budget_epsilon=3, signer=KEY)
    (header,) = _read(path)
    assert header["kind"] == "open" and header["budget_epsilon"] == 3.0 and header["public_key"] == _raw(KEY)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["l.jsonl"]  # the temp file is gone
    assert "public_key" not in _read(Ledger.open(tmp_path / "plain.jsonl").path)[0]


def test_empty_file_is_corrupt_never_new(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes(b"")  # e.g. a crash of older code between create and header, or a truncation
    with pytest.raises(LedgerCorruptError, match="empty"):
        Ledger.open(path, budget_epsilon=100)
    with pytest.raises(LedgerCorruptError, match="empty"):
        _spend(Ledger(path), "a", TINY)
    assert path.read_bytes() == b""


def test_writing_never_creates_a_missing_ledger(tmp_path):
    path = tmp_path / "l.jsonl"
    with pytest.raises(LedgerError, match="no ledger"):
        _spend(Ledger(path), "a", TINY)
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(path).record_release("a", "0" * 64)
    assert not path.exists()


def test_ledger_without_header_is_corrupt(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path, budget_epsilon=100)
    _spend(ledger, "a", TINY)
    _write_chain(path, _read(path)[1:])  # header dropped, the spend re-chained as entry 0
    with pytest.raises(LedgerCorruptError, match="entry 0 is not the ledger header"):
        ledger.spent_epsilon()
    with pytest.raises(LedgerCorruptError, match="entry 0"):
        Ledger.open(path)


def test_only_entry_0_may_be_a_header(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path, budget_epsilon=1.0)
    entries = _read(path)
    _write_chain(path, entries + [{**entries[0], "budget_epsilon": 1000.0}])  # a second header raising the budget
    with pytest.raises(LedgerCorruptError, match="entry 1 is a second ledger header"):
        ledger.budget_epsilon()


def _drop_spends_and_raise_budget(entries):
    kept = [e for e in entries if e["kind"] != "spend"]
    kept[0]["budget_epsilon"] = 1000.0
    return kept


@pytest.mark.parametrize("stale_signatures", [False, True])
def test_rechained_ledger_without_the_key_is_refused_with_the_signer(tmp_path, stale_signatures):
    path = tmp_path / "l.jsonl"
    _signed(path)
    entries = _drop_spends_and_raise_budget(_read(path))
    old = {e["seq"]: e["signature"] for e in entries}
    _write_chain(path, entries)
    if stale_signatures:  # keep the old, real signatures: they sign the old hashes, not the new ones
        path.write_text("".join(json.dumps({**e, "signature": old[s]}, sort_keys=True) + "\n"
                                for s, e in zip(old, entries)))
    assert Ledger(path).budget_epsilon() == 1000.0  # without the key nothing can tell
    with pytest.raises(LedgerCorruptError, match="entry 0 is not signed by this site's key"):
        Ledger.open(path, signer=KEY)
    with pytest.raises(LedgerCorruptError, match="not signed"):
        _spend(Ledger(path, signer=KEY), "c", TINY)


def test_unsigned_entry_appended_without_the_key_is_refused(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = _signed(path, runs="a")
    _spend(ledger, "b", TINY)
    last = _read(path)[-1]
    forged = {"seq": last["seq"] + 1, "prev": last["hash"], "time": last["time"], "kind": "release",
              "run_id": "b", "sha256": "d" * 64}
    forged["hash"] = _entry_hash(forged)  # chains perfectly, but carries no signature
    with open(path, "a") as handle:
        handle.write(json.dumps(forged, sort_keys=True) + "\n")
    with pytest.raises(LedgerCorruptError, match=f"entry {forged['seq']} is not signed by this site's key"):
        ledger.released("b")
    with pytest.raises(LedgerCorruptError, match="not signed"):
        Ledger.open(path, signer=KEY)


def test_a_signed_ledger_refuses_unsigned_writes(tmp_path):
    path = tmp_path / "l.jsonl"
    _signed(path, runs="a")
    _spend(Ledger(path, signer=KEY), "b", TINY)
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="open it with that key"):
        Ledger.open(path).record_release("b", "d" * 64)  # would leave an entry the next signed read calls corrupt
    assert path.read_bytes() == before
    assert Ledger.open(path, signer=KEY).spend_for("b") is not None


def test_header_naming_another_key_is_refused(tmp_path):
    path = tmp_path / "l.jsonl"
    _signed(path)
    other = Ed25519PrivateKey.generate()
    with pytest.raises(LedgerCorruptError, match="belongs to another key"):
        Ledger.open(path, signer=other)
    entries = _read(path)
    entries[0]["public_key"] = _raw(other)
    _write_chain(path, entries, key=KEY)  # signed by the site's key, header names another: still refused
    with pytest.raises(LedgerCorruptError, match="belongs to another key"):
        Ledger.open(path, signer=KEY)


def _no_kind(entries):
    del entries[1]["kind"]


def _fractional_steps(entries):
    entries[1]["mechanism"]["steps"] = 1.9


def _float_steps(entries):
    entries[1]["mechanism"]["steps"] = 10.0  # Mechanism accepts it; the schema wants an exact int


def _extra_mechanism_field(entries):
    entries[1]["mechanism"]["amplification"] = 0.5


def _string_delta(entries):
    entries[1]["delta"] = "1e-5"


def _bool_seq(entries):
    entries[1]["seq"] = True  # True == 1 in Python: a plain `seq != number` check lets it through


def _short_sha(entries):
    entries[2]["sha256"] = "abc"


def _header_delta_one(entries):
    entries[0]["delta"] = 1.0


@pytest.mark.parametrize("damage", [_no_kind, _fractional_steps, _float_steps, _extra_mechanism_field, _string_delta,
                                    _bool_seq, _short_sha, _header_delta_one])
def test_schema_broken_entry_is_corrupt_never_a_key_or_type_error(tmp_path, damage):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path, budget_epsilon=100)
    _spend(ledger, "a", TINY)
    ledger.record_release("a", "e" * 64)
    entries = _read(path)
    damage(entries)
    _write_chain(path, entries, renumber=False)  # a consistent chain: only the schema is wrong
    number = 0 if damage is _header_delta_one else 2 if damage is _short_sha else 1
    for call in (ledger.spent_epsilon, lambda: ledger.spend_for("a"), lambda: ledger.released("a"), ledger.head,
                 lambda: _spend(ledger, "b", TINY), lambda: Ledger.open(path)):
        with pytest.raises(LedgerCorruptError, match=f"entry {number} "):
            call()


def test_nan_in_a_mechanism_is_corrupt(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path, budget_epsilon=100)
    _spend(ledger, "a", TINY)
    entries = _read(path)
    entries[1]["mechanism"]["noise_multiplier"] = float("nan")  # json writes the NaN token, json reads it back
    _write_chain(path, entries)
    with pytest.raises(LedgerCorruptError, match="entry 1"):
        ledger.spent_epsilon()


def test_invalid_entry_is_refused_before_it_is_written(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path, budget_epsilon=100)
    _spend(ledger, "a", TINY)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="sha256"):
        ledger.record_release("a", "not a hash")
    with pytest.raises(ValueError, match="delta"):
        ledger.spend("b", TINY, 0.0, "rdp", {})
    assert path.read_bytes() == before
    ledger.record_release("a", "e" * 64)  # the ledger is still fine


def test_details_cannot_override_what_is_accounted(tmp_path):
    ledger = Ledger.open(tmp_path / "l.jsonl", budget_epsilon=100)
    cheap = {"noise_multiplier": 1e6, "sample_rate": 1e-6, "steps": 1, "clip_norm": 1.0}
    entry = ledger.spend("a", M, 1e-5, "rdp", {"mechanism": cheap, "kind": "release", "seq": 7})
    assert entry["kind"] == "spend" and entry["seq"] == 1 and entry["mechanism"] == M.to_dict()
    assert ledger.spent_epsilon() == pytest.approx(epsilon_of_history([M], 1e-5))
    with pytest.raises(ValueError, match="hash and signature"):
        ledger.spend("b", TINY, 1e-5, "rdp", {"signature": "00" * 64})


def test_steps_given_as_float_are_written_as_an_int(tmp_path):
    ledger = Ledger.open(tmp_path / "l.jsonl", budget_epsilon=100)
    entry = ledger.spend("a", Mechanism(1.0, 0.01, 10.0, 1.0), 1e-5, "rdp", {})
    assert type(entry["mechanism"]["steps"]) is int
    assert ledger.spend_for("a")["mechanism"]["steps"] == 10


def test_second_release_of_a_run_is_refused(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = _signed(path, runs="a")
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="already released"):
        ledger.record_release("a", "d" * 64)
    assert path.read_bytes() == before


def test_head_and_entry_at(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger.open(path, budget_epsilon=100, signer=KEY)
    assert ledger.head() == (0, ledger.header()["hash"])
    entry = _spend(ledger, "a", TINY)
    assert ledger.head() == (entry["seq"], entry["hash"]) == (1, _read(path)[1]["hash"])
    assert ledger.entry_at(1) == entry and ledger.entry_at(0)["kind"] == "open"
    assert ledger.entry_at(2) is None and ledger.entry_at(-1) is None


def test_truncation_at_a_line_boundary_still_parses(tmp_path):
    """What a ledger alone cannot see: losing its last entries. The server's anchor (seq, hash) catches it
    (see test_audit_recheck.py)."""
    path = tmp_path / "l.jsonl"
    ledger = _signed(path)
    seq, _ = ledger.head()
    path.write_text("".join(_lines(path)[:2]))
    assert Ledger.open(path, signer=KEY).head()[0] == 1 < seq


def _create_at_once(path, barrier, results, run_id, b_decided=None, a_done=None):
    """One of two processes opening the same new ledger; with the events, in the worst order:
    B decides the ledger is new and waits, A creates it and spends, then B goes on creating."""
    if b_decided is not None and run_id == "b":
        real = tempfile.mkstemp

        def mkstemp(*args, **kwargs):
            made = real(*args, **kwargs)
            b_decided.set()
            a_done.wait(timeout=10)
            return made

        tempfile.mkstemp = mkstemp  # in this child process only
    barrier.wait()
    if b_decided is not None and run_id == "a":
        b_decided.wait(timeout=10)
    ledger = Ledger.open(path, budget_epsilon=5, signer=KEY)
    _spend(ledger, run_id, TINY)  # lost if the other process replaced the file under this one
    if a_done is not None and run_id == "a":
        a_done.set()
    results.put(ledger.header()["hash"])


@pytest.mark.parametrize("forced", [False, True])
def test_concurrent_creation_writes_exactly_one_header(tmp_path, forced):
    ctx = multiprocessing.get_context("fork")  # fork: the children need not import torch again
    for attempt in range(1 if forced else 6):  # unforced: several rounds, so the processes may really race
        path = tmp_path / f"l{attempt}.jsonl"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        events = (ctx.Event(), ctx.Event()) if forced else ()
        procs = [ctx.Process(target=_create_at_once, args=(path, barrier, results, run, *events)) for run in "ab"]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert [proc.exitcode for proc in procs] == [0, 0]
        hashes = [results.get(timeout=5) for _ in procs]
        entries = Ledger.open(path, signer=KEY).entries()
        assert [e["kind"] for e in entries] == ["open", "spend", "spend"] and hashes == [entries[0]["hash"]] * 2
        assert {e["run_id"] for e in entries[1:]} == {"a", "b"}
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".l{attempt}.")] == []  # no temp file left


def test_ledger_errors_are_fedsynth_refusals():
    from fedsynth.common.errors import FedsynthError

    assert issubclass(LedgerCorruptError, FedsynthError) and issubclass(BudgetExceededError, FedsynthError)
    assert issubclass(LedgerError, RuntimeError)  # as before, for callers that catch RuntimeError


@pytest.mark.timeout(20)
def test_a_ledger_path_that_is_a_fifo_or_a_folder_is_refused_at_once(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "folder.jsonl").mkdir()
    for name in ("fifo.jsonl", "folder.jsonl"):
        with pytest.raises(LedgerError):
            Ledger.open(tmp_path / name)


@pytest.mark.parametrize("edit", [
    lambda line: line.replace(b'"delta": 1e-05', b'"delta": 1e-05, "delta": 1e-05'),  # a key twice
    lambda line: line.replace(b"\n", b"\r\n"),
    lambda line: line.replace(b'"seq": 0', b'"seq": ' + b"1" * 5000),
    lambda line: line.replace(b'"delta": 1e-05', b'"delta": ' + b"9" * 400),
])
def test_a_header_line_edited_in_any_way_is_corrupt(tmp_path, edit):
    ledger = Ledger.open(tmp_path / "l.jsonl", budget_epsilon=10.0)
    raw = ledger.path.read_bytes()
    first, rest = raw.split(b"\n", 1)
    ledger.path.write_bytes(edit(first + b"\n") + rest)
    with pytest.raises(LedgerCorruptError):
        Ledger.open(ledger.path)
