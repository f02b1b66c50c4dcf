"""The round's reply boundary: hostile replies of every shape are rejections with a reason, never exceptions.

Property-based (hypothesis): arbitrary records, arbitrary claim text, and valid signed uploads with one
claim field replaced by an arbitrary JSON value and signed again. Whatever arrives, `judge_content`
returns a row and a verdict; it accepts only what a registered key signed for this round and what
recomputes to its claimed ε.
"""

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from helpers import grid_set, make_claim, signed_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.common.claim import Claim, ClaimError
from fedsynth.common.signing import generate_signing_key, load_private_key
from fedsynth.server.anchors import LedgerAnchors
from fedsynth.server.intake import Intake
from fedsynth.server.registry import KeyRegistry
from fedsynth.server.validation import UploadPolicy

RUN, NONCE = "run-1", "nonce-1"
POLICY = UploadPolicy(num_classes=10, image_shape=(1, 28, 28), max_ipc=2, max_epsilon=10.0)
KEYS = Path(tempfile.mkdtemp(prefix="fedsynth-intake-keys-"))
generate_signing_key(KEYS / "site-0.pem", KEYS / "site-0.pub")
KEY = load_private_key(KEYS / "site-0.pem")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _intake() -> Intake:
    anchors = LedgerAnchors(Path(tempfile.mkdtemp(prefix="fedsynth-anchors-")) / "anchors.json")
    return Intake(POLICY, KeyRegistry(KEYS), anchors, RUN, NONCE)


def _good_record(**claim_changes):
    images, labels = grid_set()
    claim = make_claim(images, labels, **claim_changes)
    return signed_record(KEY, images, labels, claim, "site-0", RUN, NONCE), claim


def _judge(content):
    row, verdict = _intake().judge_content("node-7", content)
    assert isinstance(verdict.reason, str) and "\n" not in row["reason"] and "|" not in row["reason"]
    return row, verdict


def test_a_good_upload_is_accepted_once_per_key():
    intake = _intake()
    record, _ = _good_record()
    row, verdict = intake.judge_content("node-1", record)
    assert verdict.accepted and row["site"] == "site-0" and row["releases"] == 100
    again, _ = _good_record()
    row, verdict = intake.judge_content("node-2", again)
    assert not verdict.accepted and "duplicate" in verdict.reason


def test_a_rolled_back_ledger_is_rejected_across_rounds(tmp_path):
    anchors = LedgerAnchors(tmp_path / "anchors.json")
    first = Intake(POLICY, KeyRegistry(KEYS), anchors, RUN, NONCE)
    assert first.judge_content("node-1", _good_record(ledger_seq=5)[0])[1].accepted
    anchors.save()
    later = Intake(POLICY, KeyRegistry(KEYS), LedgerAnchors(tmp_path / "anchors.json"), RUN, NONCE)
    row, verdict = later.judge_content("node-1", _good_record(ledger_seq=5)[0])
    assert not verdict.accepted and "rollback" in verdict.reason
    assert later.judge_content("node-1", _good_record(ledger_seq=7)[0])[1].accepted


def test_a_claim_without_a_ledger_anchor_is_refused():
    row, verdict = _judge(_good_record(ledger_seq=None)[0])
    assert not verdict.accepted and "names no ledger entry" in verdict.reason


def test_a_key_found_by_a_path_in_the_name_is_never_used(tmp_path):
    record, _ = _good_record()
    record["claim"]["site"] = "../" + KEYS.name + "/site-0"
    row, verdict = _judge(record)
    assert not verdict.accepted and "site name" in verdict.reason


def test_a_damaged_anchors_file_stops_the_server(tmp_path):
    from fedsynth.server.anchors import AnchorsError

    (tmp_path / "anchors.json").write_text("{")
    with pytest.raises(AnchorsError, match="damaged"):
        LedgerAnchors(tmp_path / "anchors.json")


# ---- properties ------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
config_values = (st.text(max_size=40) | st.binary(max_size=80) | st.integers(-2**70, 2**70) | st.booleans()
                 | st.floats() | st.lists(st.integers(-5, 5), max_size=3))
names = st.sampled_from(["synthetic", "claim", "refusal", "telemetry", "x"])


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(["uint8", "int64", "float32", "float64", "object", "bool"]))
    shape = tuple(draw(st.lists(st.integers(0, 30), max_size=5)))
    if draw(st.booleans()):
        return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=draw(st.binary(max_size=600)))
    small = tuple(min(n, 4) for n in shape)
    return Array(np.zeros(small, dtype=np.uint8 if dtype in ("object", "bool") else dtype))


@st.composite
def records(draw):
    content = {}
    for name in draw(st.lists(names, max_size=4, unique=True)):
        kind = draw(st.sampled_from(["array", "config", "metric"]))
        if kind == "array":
            keys = draw(st.lists(st.sampled_from(["images", "labels", "z"]), max_size=3, unique=True))
            content[name] = ArrayRecord({k: draw(arrays()) for k in keys})
        elif kind == "config":
            keys = draw(st.lists(st.sampled_from(["json", "signature", "site", "run-id", "nonce", "refused"]),
                                 max_size=6, unique=True))
            content[name] = ConfigRecord({k: draw(config_values) for k in keys})
        else:
            content[name] = MetricRecord({"seconds": draw(st.floats(allow_nan=True))})
    return RecordDict(content)


@FUZZ
@given(records())
def test_arbitrary_records_are_rejected_never_raised(content):
    row, verdict = _judge(content)
    assert not verdict.accepted


@FUZZ
@given(st.binary(max_size=2000) | st.text(max_size=2000) | json_values.map(json.dumps))
def test_arbitrary_claim_text_is_rejected_never_raised(text):
    record, _ = _good_record()
    record["claim"]["json"] = text
    row, verdict = _judge(record)
    assert not verdict.accepted


CLAIM_FIELDS = sorted(json.loads(_good_record()[1].to_json()))


@FUZZ
@given(st.sampled_from(CLAIM_FIELDS + ["extra"]), json_values)
def test_a_signed_claim_with_any_field_replaced_is_judged_by_its_values(field, value):
    """Signed again with the registered key, so only the claim's own checks stand between it and the pool."""
    images, labels = grid_set()
    claim = make_claim(images, labels)
    edited = {**json.loads(claim.to_json()), field: value}
    text = json.dumps(edited, allow_nan=True)
    record = signed_record(KEY, images, labels, claim, "site-0", RUN, NONCE)
    record["claim"]["json"] = text
    try:  # a field that still parses into a claim is signed as it reads, so the signature holds
        parsed = Claim.from_json(text)
        from fedsynth.common.signing import sign

        record["claim"]["signature"] = sign(KEY, parsed, RUN, NONCE)
    except ClaimError:
        parsed = None
    row, verdict = _judge(record)
    if verdict.accepted:
        assert parsed is not None and math.isfinite(row["epsilon"]) and row["releases"] >= 1
        assert parsed.sha256 == claim.sha256 and parsed.epsilon == pytest.approx(row["epsilon"], rel=1e-6)
    if parsed is None:
        assert not verdict.accepted


def test_a_wrongly_signed_upload_is_never_accepted():
    record, _ = _good_record()
    record["claim"]["signature"] = Ed25519PrivateKey.generate().sign(b"x")
    row, verdict = _judge(record)
    assert not verdict.accepted and "signature" in verdict.reason


def test_a_prv_claim_is_recomputed_by_prv_and_checked_like_any_other():
    from fedsynth.common.privacy.accounting import Mechanism, epsilon_of_history

    eps = epsilon_of_history([Mechanism(1.5, 0.1, 200, 1.0)], 1e-5, "prv")
    row, verdict = _judge(_good_record(accountant="prv", sigma=1.5, q=0.1, releases=200, epsilon=eps)[0])
    assert verdict.accepted and verdict.epsilon == pytest.approx(eps, rel=1e-6)
    rdp = epsilon_of_history([Mechanism(1.5, 0.1, 200, 1.0)], 1e-5, "rdp")
    row, verdict = _judge(_good_record(accountant="prv", sigma=1.5, q=0.1, releases=200, epsilon=rdp)[0])
    assert not verdict.accepted and "does not match" in verdict.reason  # an RDP ε under a PRV label


def test_a_claim_whose_recompute_would_run_for_minutes_is_refused_at_the_limit():
    """PRV's cost grows with the claim's parameters: a hostile claim must cost the round seconds, not minutes."""
    import time
    from dataclasses import replace

    anchors = LedgerAnchors(Path(tempfile.mkdtemp(prefix="fedsynth-anchors-")) / "anchors.json")
    intake = Intake(replace(POLICY, recompute_seconds=3.0), KeyRegistry(KEYS), anchors, RUN, NONCE)
    started = time.monotonic()
    row, verdict = intake.judge_content("node-7", _good_record(accountant="prv", sigma=100.0, q=1.0,
                                                               releases=10**6, epsilon=1.0)[0])
    assert not verdict.accepted and "within 3 s" in verdict.reason, verdict.reason
    assert time.monotonic() - started < 10
