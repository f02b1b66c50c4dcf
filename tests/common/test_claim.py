"""The signed claim: one strict type. What it writes it reads back exactly; anything else is a ClaimError."""

import dataclasses
import json
import math

import pytest
from helpers import grid_set, make_claim

from fedsynth.common.claim import CLAIM_FORMAT, MAX_CLAIM_BYTES, Claim, ClaimError


def _claim(**changes) -> Claim:
    images, labels = grid_set()
    return make_claim(images, labels, **changes)


def _json(**changes) -> str:
    return json.dumps({**json.loads(_claim().to_json()), **changes})


def test_round_trip_is_exact_and_infinity_is_null_on_the_wire():
    claim = _claim(sigma=0.0, class_signal=(0.5,) * 10, class_counts=(-1.5,) + (120.25,) * 9)
    assert math.isinf(claim.epsilon) and json.loads(claim.to_json())["epsilon"] is None
    assert Claim.from_json(claim.to_json()) == claim
    assert Claim.from_json(claim.to_json()).to_json() == claim.to_json()  # the signed bytes survive a trip
    assert claim.mechanism.steps == claim.releases


@pytest.mark.parametrize("text,says", [
    (_json(epsilon="1.0"), "epsilon must be a number"),
    (_json(releases=1.9), "releases must be an integer"),
    (_json(releases="5"), "releases must be an integer"),
    (_json(releases=True), "releases must be an integer"),
    (_json(releases=0), "releases must lie in"),
    (_json(release_dimension=10**400), "release_dimension must lie in"),
    (_json(class_signal=[1e308] * 10), "class_signal[] must lie in"),
    (_json(class_signal=[1.0] * 9), "one number per class"),
    (_json(class_counts=[1.0] * 11), "class_counts must give one number per class"),
    (_json(class_counts=[1e300] * 10), "class_counts[] must lie in"),
    (_json(class_counts=["5"] * 10), "class_counts[] must be a number"),
    (_json(class_counts=5), "class_counts must give one number per class"),
    (_json(clip_norm=0), "clip_norm must lie in"),
    (_json(delta=1.0), "delta must lie in"),
    (_json(sample_rate=0), "sample_rate must lie in"),
    (_json(accountant="gdp"), "accountant"),
    (_json(sha256="x" * 64), "sha256"),
    (_json(ledger_head=None), "come together"),
    (_json(format="fedsynth-claim/1"), "format"),
    (_json(surprise=1), "unknown field"),
    (_json(front_end="wavelets"), "front_end"),
    (_json(soft_labels=1), "soft_labels must be true or false"),
    (_json(config={"nested": {"a": 1}}), "config must map"),
    (json.dumps({k: v for k, v in json.loads(_json()).items() if k != "sha256"}), "lacks sha256"),
    (_json().replace('"delta": 1e-05', '"delta": NaN'), "NaN is not a JSON number"),
    (_json().replace('"delta": 1e-05', '"delta": Infinity'), "Infinity is not a JSON number"),
    (_json().replace('"releases": 100', '"releases": ' + "9" * 5000), "not strict JSON"),
    ("[" * 20_000 + "]" * 20_000, "not strict JSON"),
    ("x" * (MAX_CLAIM_BYTES + 1), "more than the limit"),
    ("[]", "JSON object"),
    (b"\xff\xfe", "not strict JSON"),
])
def test_anything_but_a_well_formed_claim_is_refused_by_name(text, says):
    with pytest.raises(ClaimError) as caught:
        Claim.from_json(text)
    assert says in str(caught.value)


def test_the_type_checks_values_built_in_code_too():
    with pytest.raises(ClaimError, match="releases"):
        dataclasses.replace(_claim(), releases=0)
    with pytest.raises(ClaimError, match="clip_norm must be finite"):
        dataclasses.replace(_claim(), clip_norm=math.nan)
    assert _claim().format == CLAIM_FORMAT


@pytest.mark.parametrize("text,says", [
    ('{"format": "x", ' + _json()[1:], "a key appears twice"),  # a hidden first value another parser would read
    (_json().encode("utf-16"), "not strict JSON"),
    (_json(noise_multiplier=1000.0), "noise_multiplier must lie in"),
    (_json(releases=10**7), "releases must lie in"),
])
def test_claims_that_two_parsers_could_read_differently_or_that_take_minutes_to_recompute_are_refused(text, says):
    with pytest.raises(ClaimError, match=says):
        Claim.from_json(text)
