"""A site's reply on the wire: Flower records only (numpy arrays without pickle, a JSON string, raw bytes).

    RecordDict {
      "synthetic": ArrayRecord {"images": uint8 [N, C, H, W] (pixel k ↦ k/255), "labels": int64 [N],
                                "soft_labels": float32 [N, classes] (only a set made on a front end)},
      "claim":     ConfigRecord {"json": <claim as strict JSON>, "signature": <Ed25519 bytes>, "site": <name>,
                                 "run-id": <run signed for>, "nonce": <server nonce signed for>},
      "telemetry": MetricRecord {"seconds", "peak-rss-mb"}   (optional, unsigned, only reported)
    }
    or RecordDict {"refusal": ConfigRecord {"site": <name>, "refused": <one-line reason>}}

`from_record` trusts nothing: sizes are checked on the declared shapes before anything is
decoded, the claim is parsed strictly (`Claim.from_json`), and every problem is a PayloadError.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.common.claim import MAX_CLASSES, Claim, ClaimError
from fedsynth.common.errors import FedsynthError, one_line
from fedsynth.common.synthetic_set import from_8bit, on_8bit_grid, to_8bit

SITE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a site name is a label, never a path
SIGNATURE_BYTES = 64  # Ed25519
MAX_FIELD_CHARS = 256  # run id, nonce, site name, refusal reason (longer reasons are cut)
_NPY_HEADER_SLACK = 4096  # the .npy header around an array's bytes


class PayloadError(FedsynthError, ValueError):
    """The reply does not have the expected structure; the message is the rejection reason."""


@dataclass(frozen=True)
class Upload:
    """A decoded reply: the set (float32 pixels on the 8-bit grid, int64 labels) and its signed claim."""

    site: str
    images: torch.Tensor
    labels: torch.Tensor
    claim: Claim
    signature: bytes
    signed_round: tuple[str, str]  # (run id, nonce) the site says it signed for
    soft_labels: torch.Tensor | None = None  # float32 [N, classes] as decoded: checked by the server's policy


@dataclass(frozen=True)
class Refusal:
    """A site's refusal to take part (budget spent, bad request, damaged ledger), as it arrived."""

    site: str | None  # None when the name is not a valid site name
    reason: str


def valid_site_name(name: Any) -> bool:
    return isinstance(name, str) and SITE_NAME.fullmatch(name) is not None


def to_record(images: torch.Tensor, labels: torch.Tensor, claim: Claim, signature: bytes, site: str,
              run_id: str, nonce: str, soft_labels: torch.Tensor | None = None) -> RecordDict:
    """`run_id`/`nonce` name the round the site signed for, so a replay is reported as one.

    Images travel as 8-bit levels; they must already lie on that grid (the engine releases
    them so), otherwise the signed content hash would not survive the trip.
    """
    if not on_8bit_grid(images):
        raise ValueError("images must be float32 pixels on the 8-bit grid (common.synthetic_set.quantise) to be sent")
    tensors = {"images": to_8bit(images).contiguous(), "labels": labels.detach().cpu().contiguous()}
    if soft_labels is not None:
        tensors["soft_labels"] = soft_labels.detach().cpu().float().contiguous()
    arrays = ArrayRecord(tensors)
    meta = ConfigRecord({"json": claim.to_json(), "signature": signature, "site": site, "run-id": run_id,
                         "nonce": nonce})
    return RecordDict({"synthetic": arrays, "claim": meta})


def refusal_record(site: str, reason: str) -> RecordDict:
    """A site's one-line refusal, for the server's report."""
    return RecordDict({"refusal": ConfigRecord({"site": site, "refused": one_line(reason, 1000)})})


def payload_bytes(content: RecordDict) -> int:
    """Bytes of what a site uploads: array buffers, claim JSON and signature (transport framing aside)."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
        elif isinstance(record, ConfigRecord):
            total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in record.values())
    return total


def telemetry_record(seconds: float, peak_rss_mb: float) -> MetricRecord:
    """How long the site worked and its peak memory: operational figures for the report, nothing from the data."""
    return MetricRecord({"seconds": float(seconds), "peak-rss-mb": float(peak_rss_mb)})


def read_telemetry(content: RecordDict) -> dict[str, float]:
    """The site's telemetry if present, finite and non-negative (it is reported, never relied on)."""
    record = content.get("telemetry") if "telemetry" in content else None
    if not isinstance(record, MetricRecord):
        return {}
    out = {}
    for key in ("seconds", "peak-rss-mb"):
        value = record.get(key) if key in record else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            out[key.replace("-", "_")] = float(min(value, 1e12))
    return out


def read_refusal(content: RecordDict) -> Refusal:
    """A refusal record, whatever it holds: an invalid name becomes None, the reason one short line."""
    record = content["refusal"]
    if not isinstance(record, ConfigRecord):
        return Refusal(None, "refusal record of the wrong type")
    site = record.get("site") if "site" in record else None
    reason = record.get("refused") if "refused" in record else None
    return Refusal(site if valid_site_name(site) else None,
                   one_line(reason, 300) if isinstance(reason, str) else "refusal without a reason")


def _string(meta: ConfigRecord, key: str) -> str:
    value = meta.get(key) if key in meta else None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD_CHARS:
        raise PayloadError(f"schema: claim record field {key} must be a string of 1 to {MAX_FIELD_CHARS} characters")
    return value


def _decode(arrays: ArrayRecord, name: str, dtype: str, ndim: int, max_elements: int) -> torch.Tensor:
    """Decode one array after checking its declared dtype, rank and size, then check the decoded one agrees."""
    array = arrays[name]
    shape = tuple(array.shape) if isinstance(array.shape, (list, tuple)) else ()
    if array.dtype != dtype or len(shape) != ndim or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise PayloadError(f"schema: {name} must be {dtype} with {ndim} dimensions")
    elements = math.prod(shape)
    itemsize = np.dtype(dtype).itemsize
    if elements > max_elements or len(array.data) > elements * itemsize + _NPY_HEADER_SLACK:
        raise PayloadError(f"size: {name} holds {elements} values ({len(array.data)} bytes), at most "
                           f"{max_elements} allowed")
    try:
        decoded = array.numpy()  # numpy.load without pickle
    except Exception as err:  # noqa: BLE001 - any decoding failure is a rejection, not a crash
        raise PayloadError(f"schema: array {name} does not decode ({type(err).__name__})") from None
    if decoded.dtype != np.dtype(dtype) or tuple(decoded.shape) != shape:
        raise PayloadError(f"schema: array {name} decodes to {decoded.dtype} {decoded.shape}, not what it declared")
    return torch.from_numpy(decoded.copy())


def from_record(content: RecordDict, max_images: int, image_shape: tuple[int, int, int],
                num_classes: int = MAX_CLASSES) -> Upload:
    """Decode a reply without trusting it: any structural problem is a PayloadError naming it.

    `max_images` and `image_shape` bound what is decoded (the server's policy), so an oversized
    upload is refused from its declared shape, before a byte of it is converted.
    """
    if "synthetic" not in content or "claim" not in content:
        raise PayloadError("schema: reply lacks the synthetic or claim record")
    arrays, meta = content["synthetic"], content["claim"]
    if not isinstance(arrays, ArrayRecord) or not isinstance(meta, ConfigRecord):
        raise PayloadError("schema: reply records have the wrong types")
    if set(arrays.keys()) not in ({"images", "labels"}, {"images", "labels", "soft_labels"}):
        raise PayloadError(f"schema: expected arrays images, labels and optionally soft_labels, got {len(arrays)} "
                           "other arrays")
    pixels = math.prod(image_shape)
    images = _decode(arrays, "images", "uint8", 4, max_images * pixels)
    labels = _decode(arrays, "labels", "int64", 1, max_images)
    soft = _decode(arrays, "soft_labels", "float32", 2, max_images * num_classes) if "soft_labels" in arrays else None
    site = _string(meta, "site")
    if not valid_site_name(site):
        raise PayloadError("schema: the site name must match [A-Za-z0-9_-]{1,64}")
    signature = meta.get("signature") if "signature" in meta else None
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise PayloadError(f"schema: the signature must be {SIGNATURE_BYTES} bytes")
    signed_round = (_string(meta, "run-id"), _string(meta, "nonce"))
    text = meta.get("json") if "json" in meta else None
    try:
        claim = Claim.from_json(text)
    except ClaimError as err:
        raise PayloadError(str(err)) from None
    return Upload(site, from_8bit(images), labels, claim, signature, signed_round, soft)
