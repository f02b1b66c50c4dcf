import pytest
import torch
from flwr.app import Array

from common.payload import PayloadError, from_record, to_record


def test_round_trip_keeps_dtypes_shapes_and_bytes():
    images, labels = torch.rand(6, 1, 28, 28), torch.arange(3).repeat_interleave(2)
    upload = from_record(to_record(images, labels, {"epsilon": 1.0, "nested": {"a": [1, 2]}}, b"sig", "site-3", "7", "n0"))
    assert torch.equal(upload.images, images) and upload.images.dtype == torch.float32
    assert torch.equal(upload.labels, labels) and upload.labels.dtype == torch.int64
    assert upload.claim == {"epsilon": 1.0, "nested": {"a": [1, 2]}}
    assert upload.signature == b"sig" and upload.site == "site-3"


def _good():
    return to_record(torch.rand(2, 1, 28, 28), torch.arange(2), {}, b"s", "x", "7", "n0")


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda r: r.pop("synthetic"), "lacks record"),
        (lambda r: r["synthetic"].pop("labels"), "expected arrays"),
        (lambda r: r["synthetic"].__setitem__("images", Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"x")), "does not decode"),
        (lambda r: r["claim"].__setitem__("json", "{not json"), "unreadable"),
        (lambda r: r["claim"].__setitem__("json", "[1, 2]"), "JSON object"),
    ],
)
def test_malformed_replies_are_named(mutate, reason):
    record = _good()
    mutate(record)
    with pytest.raises(PayloadError, match=reason):
        from_record(record)


def test_pickled_array_is_refused():
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
    record = _good()
    record["synthetic"]["images"] = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    with pytest.raises(PayloadError, match="does not decode"):
        from_record(record)
