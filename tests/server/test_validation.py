"""Every kind of bad upload is rejected with its reason; a good one is accepted."""

import math

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.privacy.accounting import Mechanism, epsilon_of_history
from common.signing import generate_signing_key, load_private_key, load_public_key, sign
from common.synthetic_set import content_hash
from server.validation import Upload, UploadPolicy, check_upload

POLICY = UploadPolicy(num_classes=10, image_shape=(1, 28, 28), max_ipc=2, max_epsilon=10.0)
RUN, NONCE = "run-1", "nonce-1"
KEY = Ed25519PrivateKey.generate()


def _claim(images, labels, sigma=1.0, q=0.01, steps=100):
    eps = epsilon_of_history([Mechanism(sigma, q, steps, 1.0)], 1e-5)
    return {"epsilon": None if math.isinf(eps) else eps, "delta": 1e-5, "noise_multiplier": sigma, "sample_rate": q,
            "steps": steps, "clip_norm": 1.0, "accountant": "rdp", "sha256": content_hash(images, labels)}


def _upload(images=None, labels=None, key=KEY, nonce=NONCE, claim_edit=None, says_round=None, **claim_kwargs):
    images = torch.rand(20, 1, 28, 28) if images is None else images
    labels = torch.arange(10).repeat_interleave(2) if labels is None else labels
    claim = _claim(images, labels, **claim_kwargs) if images.dtype == torch.float32 and labels.dtype == torch.int64 else {}
    if claim_edit:
        claim_edit(claim)
    signature = sign(key, claim, RUN, nonce) if claim else b""
    return Upload("site-0", images, labels, claim, signature, says_round or (RUN, nonce))


def _check(upload, public_key=KEY.public_key()):
    return check_upload(upload, POLICY, public_key, RUN, NONCE)


def test_good_upload_is_accepted_with_recomputed_epsilon():
    verdict = _check(_upload())
    assert verdict.accepted and verdict.reason == "accepted"
    assert verdict.epsilon == pytest.approx(epsilon_of_history([Mechanism(1.0, 0.01, 100, 1.0)], 1e-5))


def _tampered_after_signing():
    up = _upload()
    up.images = up.images.clone()
    up.images[0, 0, 0, 0] = 1.0 - up.images[0, 0, 0, 0]
    return up


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: _upload(images=torch.rand(20, 1, 28, 28, dtype=torch.float64)), "dtype: images"),
        (lambda: _upload(labels=torch.arange(10).repeat_interleave(2).int()), "dtype: labels"),
        (lambda: _upload(images=torch.rand(20, 3, 28, 28)), "shape: images"),
        (lambda: _upload(labels=torch.arange(10)), "shape:"),
        (lambda: _upload(images=torch.full((20, 1, 28, 28), float("nan"))), "NaN"),
        (lambda: _upload(images=torch.rand(20, 1, 28, 28) * 3), "outside [0, 1]"),
        (lambda: _upload(labels=torch.arange(10).repeat_interleave(2) + 5), "labels: outside"),
        (lambda: _upload(images=torch.rand(30, 1, 28, 28), labels=torch.arange(10).repeat_interleave(3)), "ipc:"),
        (lambda: _upload(images=torch.rand(40000, 1, 28, 28), labels=torch.zeros(40000, dtype=torch.long)), "size:"),
        (lambda: _upload(key=Ed25519PrivateKey.generate()), "signature: does not verify"),
        (lambda: _upload(nonce="an-earlier-round"), "replay: signed for an earlier nonce"),
        (lambda: _upload(nonce="an-earlier-round", says_round=("run-0", "n")), "replay: signed for run run-0"),
        (lambda: _upload(nonce="an-earlier-round", says_round=(RUN, NONCE)), "signature: does not verify"),  # lies
        (_tampered_after_signing, "differ from the signed content hash"),
        (lambda: _upload(claim_edit=lambda c: c.update(epsilon=c["epsilon"] / 2)), "does not match"),
        (lambda: _upload(claim_edit=lambda c: c.pop("steps")), "claim lacks steps"),
        (lambda: _upload(claim_edit=lambda c: c.update(class_signal=[1.0] * 9)), "schema: class_signal"),
        (lambda: _upload(claim_edit=lambda c: c.update(class_signal="1,2")), "schema: class_signal"),
        (lambda: _upload(claim_edit=lambda c: c.update(class_signal=[1.0] * 9 + [-0.5])), "values: class_signal"),
        (lambda: _upload(claim_edit=lambda c: c.update(class_signal=[1.0] * 9 + ["1"])), "values: class_signal"),
        (lambda: _upload(claim_edit=lambda c: c.update(class_signal=[1.0] * 9 + [True])), "values: class_signal"),
        (lambda: _upload(claim_edit=lambda c: c.update(release_dimension=-3)), "values: release_dimension"),
        (lambda: _upload(claim_edit=lambda c: c.update(release_dimension="24138")), "values: release_dimension"),
        (lambda: _upload(sigma=0.3), "policy: ε="),
        (lambda: _upload(sigma=0.0), "policy: ε="),
    ],
)
def test_bad_upload_is_rejected_with_its_reason(make, reason):
    verdict = _check(make())
    assert not verdict.accepted
    assert reason in verdict.reason


def test_upload_with_a_class_signal_is_accepted():
    assert _check(_upload(claim_edit=lambda c: c.update(class_signal=[0.0, 3.5] * 5, release_dimension=24138))).accepted


def test_unknown_site_key_is_rejected():
    verdict = _check(_upload(), public_key=None)
    assert not verdict.accepted and "no registered public key" in verdict.reason


def test_key_files_round_trip_and_refuse_overwrite(tmp_path):
    public = generate_signing_key(tmp_path / "k.pem", tmp_path / "k.pub")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    private = load_private_key(tmp_path / "k.pem")
    up = _upload(key=private)
    assert _check(up, public_key=load_public_key(tmp_path / "k.pub")).accepted
    assert _check(up, public_key=public).accepted
    with pytest.raises(FileExistsError):
        generate_signing_key(tmp_path / "k.pem", tmp_path / "k.pub")
