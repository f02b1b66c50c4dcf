import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from helpers import grid_set, make_claim

from fedsynth.common.payload import (
    PayloadError,
    from_record,
    payload_bytes,
    read_refusal,
    read_telemetry,
    refusal_record,
    telemetry_record,
    to_record,
)
from fedsynth.common.synthetic_set import content_hash

LIMITS = (20, (1, 28, 28))  # at most 20 images of 1×28×28


def _good(images=None, labels=None):
    if images is None:
        images, labels = grid_set(per_class=2)
    return to_record(images, labels, make_claim(images, labels), b"s" * 64, "site-3", "7", "n0")


def test_round_trip_keeps_pixels_dtypes_shapes_the_claim_and_the_content_hash():
    images, labels = grid_set(per_class=2)
    images[0, 0, :2, :2] = torch.tensor([[0.0, 1.0], [1 / 255, 254 / 255]])  # both ends of the grid
    claim = make_claim(images, labels)
    record = to_record(images, labels, claim, b"g" * 64, "site-3", "7", "n0")
    assert record["synthetic"]["images"].dtype == "uint8"  # one byte per pixel on the wire
    upload = from_record(record, *LIMITS)
    assert torch.equal(upload.images, images) and upload.images.dtype == torch.float32
    assert content_hash(upload.images, upload.labels) == content_hash(images, labels)  # what the signature binds
    assert torch.equal(upload.labels, labels) and upload.labels.dtype == torch.int64
    assert upload.claim == claim
    assert upload.signature == b"g" * 64 and upload.site == "site-3" and upload.signed_round == ("7", "n0")


def test_images_off_the_8bit_grid_are_not_sent():
    images, labels = grid_set()
    with pytest.raises(ValueError, match="8-bit grid"):
        to_record(torch.rand(20, 1, 28, 28), labels, make_claim(images, labels), b"s" * 64, "x", "7", "n0")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype == object)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda r: r.pop("synthetic"), "lacks the synthetic or claim record"),
        (lambda r: r.__setitem__("claim", MetricRecord({"x": 1.0})), "wrong types"),
        (lambda r: r["synthetic"].pop("labels"), "expected arrays"),
        (lambda r: r["synthetic"].__setitem__("images", Array(np.random.rand(20, 1, 28, 28).astype(np.float32))),
         "images must be uint8"),
        (lambda r: r["synthetic"].__setitem__("images", Array(dtype="uint8", shape=(20, 1, 28, 28),
                                                              stype="numpy.ndarray", data=b"x")), "does not decode"),
        (lambda r: r["synthetic"].__setitem__("images", Array(dtype="uint8", shape=(20, 1, 28, 28),
                                                              stype="numpy.ndarray",
                                                              data=_npy(np.zeros((10, 1, 28, 28), np.uint8)))),
         "not what it declared"),
        (lambda r: r["synthetic"].__setitem__("images", Array(np.zeros((21, 1, 28, 28), np.uint8))), "size: images"),
        (lambda r: r["synthetic"].__setitem__("images", Array(dtype="uint8", shape=(20, 1, 28, 28),
                                                              stype="numpy.ndarray", data=b"\0" * 10**6)), "size"),
        (lambda r: r["synthetic"].__setitem__("images", Array(dtype="object", shape=(1, 1, 1, 1), stype="numpy.ndarray",
                                                              data=_npy(np.array([[[[object()]]]], dtype=object)))),
         "images must be uint8"),
        (lambda r: r["claim"].__setitem__("json", "{not json"), "not strict JSON"),
        (lambda r: r["claim"].__setitem__("json", "[1, 2]"), "JSON object"),
        (lambda r: r["claim"].__setitem__("json", 7), "must be JSON text"),
        (lambda r: r["claim"].__setitem__("site", "../../x/attacker"), "site name"),
        (lambda r: r["claim"].__setitem__("site", "./site-A"), "site name"),
        (lambda r: r["claim"].__setitem__("site", 3), "field site"),
        (lambda r: r["claim"].__setitem__("signature", b"short"), "signature must be 64 bytes"),
        (lambda r: r["claim"].pop("nonce"), "field nonce"),
    ],
)
def test_malformed_replies_are_named(mutate, reason):
    record = _good()
    mutate(record)
    with pytest.raises(PayloadError, match=reason):
        from_record(record, *LIMITS)


def test_upload_size_counts_the_arrays_and_the_claim():
    record = _good()
    arrays = 20 * 28 * 28 * 1 + 20 * 8
    assert arrays < payload_bytes(record) < arrays + 4000  # numpy headers + claim JSON + signature + names
    record["telemetry"] = telemetry_record(12.5, 800.0)
    assert read_telemetry(record) == {"seconds": 12.5, "peak_rss_mb": 800.0}


def test_telemetry_is_optional_and_never_breaks_decoding():
    record = _good()
    assert read_telemetry(record) == {}
    record["telemetry"] = ConfigRecord({"seconds": "lots"})  # wrong record type: ignored
    assert read_telemetry(record) == {} and from_record(record, *LIMITS).site == "site-3"
    record["telemetry"] = MetricRecord({"seconds": 3.0, "secret": 1.0, "peak-rss-mb": float("nan")})
    assert read_telemetry(record) == {"seconds": 3.0}  # only the known, finite figures are read


@pytest.mark.parametrize("record,site,reason", [
    (refusal_record("site-2", "budget\nexhausted | fake row"), "site-2", "budget exhausted / fake row"),
    (RecordDict({"refusal": ConfigRecord({"refused": "no site"})}), None, "no site"),
    (RecordDict({"refusal": ConfigRecord({"site": "../x", "refused": 5})}), None, "refusal without a reason"),
    (RecordDict({"refusal": ArrayRecord()}), None, "wrong type"),
])
def test_refusals_are_read_whatever_they_hold(record, site, reason):
    refusal = read_refusal(record)
    assert refusal.site == site and reason in refusal.reason and "\n" not in refusal.reason


def test_soft_labels_travel_as_float32_and_are_bounded_by_the_declared_shape():
    images, labels = grid_set(per_class=2)
    soft = torch.softmax(torch.randn(20, 10), 1)
    claim = make_claim(images, labels, sha256=content_hash(images, labels, soft), front_end="scatter",
                       soft_labels=True)
    record = to_record(images, labels, claim, b"g" * 64, "site-3", "7", "n0", soft)
    upload = from_record(record, *LIMITS, num_classes=10)
    assert torch.equal(upload.soft_labels, soft) and upload.soft_labels.dtype == torch.float32
    assert content_hash(upload.images, upload.labels, upload.soft_labels) == claim.sha256
    assert from_record(_good(), *LIMITS).soft_labels is None
    record["synthetic"]["soft_labels"] = Array(np.zeros((20, 11), dtype=np.float32))
    with pytest.raises(PayloadError, match="size: soft_labels"):
        from_record(record, *LIMITS, num_classes=10)
    record["synthetic"]["soft_labels"] = Array(np.zeros((20, 10), dtype=np.float64))
    with pytest.raises(PayloadError, match="soft_labels must be float32"):
        from_record(record, *LIMITS, num_classes=10)
