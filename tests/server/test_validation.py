"""Every kind of bad upload is rejected with its reason; a good one is accepted."""

import dataclasses

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import grid_set, make_claim

from fedsynth.common.payload import Upload
from fedsynth.common.privacy.accounting import Mechanism, epsilon_of_history
from fedsynth.common.signing import generate_signing_key, load_private_key, load_public_key, sign
from fedsynth.common.synthetic_set import content_hash
from fedsynth.server.validation import UploadPolicy, check_upload

POLICY = UploadPolicy(num_classes=10, image_shape=(1, 28, 28), max_ipc=2, max_epsilon=10.0)
RUN, NONCE = "run-1", "nonce-1"
KEY = Ed25519PrivateKey.generate()


def _upload(images=None, labels=None, key=KEY, nonce=NONCE, says_round=None, claim=None, **claim_kwargs):
    good_images, good_labels = grid_set()
    images = good_images if images is None else images
    labels = good_labels if labels is None else labels
    if claim is None:
        claim = make_claim(good_images, good_labels, **claim_kwargs)
        if images is not good_images or labels is not good_labels:
            try:
                claim = dataclasses.replace(claim, sha256=make_claim(images, labels).sha256)
            except Exception:  # noqa: BLE001 - tensors the content hash cannot take: keep the good claim
                pass
    return Upload("site-0", images, labels, claim, sign(key, claim, RUN, nonce), says_round or (RUN, nonce))


def _check(upload, public_key=KEY.public_key()):
    return check_upload(upload, POLICY, public_key, RUN, NONCE)


def test_good_upload_is_accepted_with_recomputed_epsilon():
    verdict = _check(_upload())
    assert verdict.accepted and verdict.reason == "accepted"
    assert verdict.epsilon == pytest.approx(epsilon_of_history([Mechanism(1.0, 0.01, 100, 1.0)], 1e-5, "rdp"))


def _tampered_after_signing():
    up = _upload()
    images = up.images.clone()
    images[0, 0, 0, 0] = 1.0 - images[0, 0, 0, 0]
    return dataclasses.replace(up, images=images)


def _claim_edited_after_signing(**changes):
    up = _upload()
    return dataclasses.replace(up, claim=dataclasses.replace(up.claim, **changes))


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
        (lambda: _upload(images=torch.zeros(0, 1, 28, 28), labels=torch.zeros(0, dtype=torch.long)), "no images"),
        (lambda: _upload(key=Ed25519PrivateKey.generate()), "signature: does not verify"),
        (lambda: _upload(nonce="an-earlier-round"), "replay: signed for an earlier nonce"),
        (lambda: _upload(nonce="an-earlier-round", says_round=("run-0", "n")), "replay: signed for another run"),
        (lambda: _upload(nonce="an-earlier-round", says_round=(RUN, NONCE)), "signature: does not verify"),  # lies
        (_tampered_after_signing, "differ from the signed content hash"),
        (lambda: _claim_edited_after_signing(epsilon=0.5), "signature: does not verify"),
        (lambda: _upload(epsilon=0.5), "does not match"),
        (lambda: _upload(classes=9, class_signal=None), "schema: the claim is for 9 classes"),
        (lambda: _upload(image_shape=(3, 28, 28)), "schema: the claim is for 10 classes of 3×28×28"),
        (lambda: _upload(front_end="scatter", soft_labels=True), "made for front end scatter with soft labels"),
        (lambda: _upload(soft_labels=True), "made for front end none with soft labels"),
        (lambda: _upload(delta=1e-4), "policy: δ"),
        (lambda: _upload(sigma=0.3), "policy: ε="),
        (lambda: _upload(sigma=0.0), "policy: ε="),
    ],
)
def test_bad_upload_is_rejected_with_its_reason(make, reason):
    verdict = _check(make())
    assert not verdict.accepted
    assert reason in verdict.reason


def test_upload_with_a_class_signal_is_accepted():
    assert _check(_upload(class_signal=(0.0, 3.5) * 5, release_dimension=24138)).accepted


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


SCATTER = dataclasses.replace(POLICY, front_end="scatter")


def _scatter_upload(soft=None, claim_soft=True, front_end="scatter", sent=True, config={"temperature": 4.0}):
    images, labels = grid_set()
    soft = torch.softmax(torch.randn(20, 10), 1) if soft is None else soft
    claim = make_claim(images, labels, sha256=content_hash(images, labels, soft), front_end=front_end,
                       soft_labels=claim_soft, config=config)
    return Upload("site-0", images, labels, claim, sign(KEY, claim, RUN, NONCE), (RUN, NONCE), soft if sent else None)


@pytest.mark.parametrize("make,reason", [
    (lambda: _scatter_upload(), None),
    (lambda: _scatter_upload(sent=False), "soft labels missing"),
    (lambda: _scatter_upload(soft=torch.full((20, 10), 0.2)), "each row must sum to 1"),
    (lambda: _scatter_upload(soft=torch.softmax(torch.randn(20, 10), 1).double().float() * -1), "non-negative"),
    (lambda: _scatter_upload(claim_soft=False), "made for front end scatter; this round takes front end scatter with"),
    (lambda: _scatter_upload(front_end="none"), "made for front end none with soft labels"),
    # the server multiplies the soft labels' temperature back into the site's head: it must be a usable number
    *[(lambda bad=bad: _scatter_upload(config=bad), "no soft-label temperature")
      for bad in (None, {}, {"temperature": 0.0}, {"temperature": -4.0}, {"temperature": 1e4},
                  {"temperature": True}, {"temperature": "4"})],
])
def test_a_front_end_round_takes_sets_of_its_front_end_with_valid_soft_labels(make, reason):
    verdict = check_upload(make(), SCATTER, KEY.public_key(), RUN, NONCE)
    assert verdict.accepted == (reason is None)
    if reason:
        assert reason in verdict.reason


def test_a_pixel_round_refuses_soft_labels_it_did_not_ask_for():
    images, labels = grid_set()
    soft = torch.softmax(torch.randn(20, 10), 1)
    upload = dataclasses.replace(_upload(), soft_labels=soft)
    assert "soft labels sent but not claimed" in _check(upload).reason
    assert images.shape == upload.images.shape and labels.shape == upload.labels.shape
