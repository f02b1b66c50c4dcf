import pytest
import torch
from flwr.app import Array, ConfigRecord, MetricRecord

from common.payload import PayloadError, from_record, payload_bytes, read_telemetry, telemetry_record, to_record
from common.synthetic_set import content_hash, quantise


def _pixels(*shape: int) -> torch.Tensor:
    return quantise(torch.rand(*shape))


def test_round_trip_keeps_pixels_dtypes_shapes_and_the_content_hash():
    images, labels = _pixels(6, 1, 28, 28), torch.arange(3).repeat_interleave(2)
    images[0, 0, :2, :2] = torch.tensor([[0.0, 1.0], [1 / 255, 254 / 255]])  # both ends of the grid
    record = to_record(images, labels, {"epsilon": 1.0, "nested": {"a": [1, 2]}}, b"sig", "site-3", "7", "n0")
    assert record["synthetic"]["images"].dtype == "uint8"  # one byte per pixel on the wire
    upload = from_record(record)
    assert torch.equal(upload.images, images) and upload.images.dtype == torch.float32
    assert content_hash(upload.images, upload.labels) == content_hash(images, labels)  # what the signature binds
    assert torch.equal(upload.labels, labels) and upload.labels.dtype == torch.int64
    assert upload.claim == {"epsilon": 1.0, "nested": {"a": [1, 2]}}
    assert upload.signature == b"sig" and upload.site == "site-3"


def test_images_off_the_8bit_grid_are_not_sent():
    with pytest.raises(ValueError, match="8-bit grid"):
        to_record(torch.rand(2, 1, 28, 28), torch.arange(2), {}, b"s", "x", "7", "n0")


def test_float_images_on_the_wire_are_refused():
    import numpy as np

    record = _good()
    record["synthetic"]["images"] = Array(np.random.rand(2, 1, 28, 28).astype(np.float32))
    with pytest.raises(PayloadError, match="dtype: images travel as uint8"):
        from_record(record)


def _good():
    return to_record(_pixels(2, 1, 28, 28), torch.arange(2), {}, b"s", "x", "7", "n0")


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


def test_upload_size_counts_the_arrays_and_the_claim():
    record = to_record(_pixels(20, 1, 28, 28), torch.arange(20), {"epsilon": 1.0}, b"s" * 64, "site-0", "7", "n0")
    arrays = 20 * 28 * 28 * 1 + 20 * 8
    assert arrays < payload_bytes(record) < arrays + 2000  # numpy headers + claim JSON + signature + names
    record["telemetry"] = telemetry_record(12.5, 800.0)
    assert read_telemetry(record) == {"seconds": 12.5, "peak_rss_mb": 800.0}


def test_telemetry_is_optional_and_never_breaks_decoding():
    record = _good()
    assert read_telemetry(record) == {}
    record["telemetry"] = ConfigRecord({"seconds": "lots"})  # wrong record type: ignored
    assert read_telemetry(record) == {} and from_record(record).site == "x"
    record["telemetry"] = MetricRecord({"seconds": 3.0, "secret": 1.0})  # only the known figures are read
    assert read_telemetry(record) == {"seconds": 3.0}
