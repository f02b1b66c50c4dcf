"""A site's reply on the wire: Flower records only (numpy arrays without pickle, a JSON string, raw bytes).

    RecordDict {
      "synthetic": ArrayRecord {"images": uint8 [N, C, H, W] (pixel k ↦ k/255), "labels": int64 [N]},
      "claim":     ConfigRecord {"json": <claim as strict JSON>, "signature": <Ed25519 bytes>, "site": <name>,
                                 "run-id": <run signed for>, "nonce": <server nonce signed for>},
      "telemetry": MetricRecord {"seconds", "peak-rss-mb"}   (optional, unsigned, only reported)
    }
"""

from __future__ import annotations

import json
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.synthetic_set import from_8bit, on_8bit_grid, to_8bit
from server.validation import Upload


class PayloadError(ValueError):
    """The reply does not have the expected structure; the message is the rejection reason."""


def to_record(images: torch.Tensor, labels: torch.Tensor, claim: dict[str, Any], signature: bytes, site: str,
              run_id: str, nonce: str) -> RecordDict:
    """`run_id`/`nonce` name the round the site signed for, so a replay is reported as one.

    Images travel as 8-bit levels; they must already lie on that grid (the engine releases
    them so), otherwise the signed content hash would not survive the trip.
    """
    if not on_8bit_grid(images):
        raise ValueError("images must be float32 pixels on the 8-bit grid (common.synthetic_set.quantise) to be sent")
    arrays = ArrayRecord({"images": to_8bit(images).contiguous(), "labels": labels.detach().cpu().contiguous()})
    meta = ConfigRecord({"json": json.dumps(claim, sort_keys=True, allow_nan=False), "signature": signature, "site": site,
                         "run-id": run_id, "nonce": nonce})
    return RecordDict({"synthetic": arrays, "claim": meta})


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
    """The site's telemetry if present and numeric (it is reported, never relied on)."""
    record = content.get("telemetry") if "telemetry" in content else None
    if not isinstance(record, MetricRecord):
        return {}
    return {key.replace("-", "_"): float(value) for key, value in record.items()
            if key in ("seconds", "peak-rss-mb") and isinstance(value, (int, float))}


def from_record(content: RecordDict) -> Upload:
    """Decode a reply without trusting it: any structural problem is a PayloadError naming it."""
    try:
        arrays, meta = content["synthetic"], content["claim"]
    except KeyError as err:
        raise PayloadError(f"schema: reply lacks record {err}") from None
    if not isinstance(arrays, ArrayRecord) or not isinstance(meta, ConfigRecord):
        raise PayloadError("schema: reply records have the wrong types")
    if set(arrays.keys()) != {"images", "labels"}:
        raise PayloadError(f"schema: expected arrays images and labels, got {sorted(arrays.keys())}")
    tensors = {}
    for name, array in arrays.items():
        try:
            tensors[name] = torch.from_numpy(array.numpy().copy())  # numpy.load without pickle
        except Exception as err:  # noqa: BLE001 - any decoding failure is a rejection, not a crash
            raise PayloadError(f"schema: array {name} does not decode ({err.__class__.__name__})") from None
    if tensors["images"].dtype != torch.uint8:
        raise PayloadError(f"dtype: images travel as uint8 (8-bit pixels), got {tensors['images'].dtype}")
    try:
        claim = json.loads(str(meta["json"]))
        signature, site = meta["signature"], str(meta["site"])
        signed_round = (str(meta["run-id"]), str(meta["nonce"])) if "run-id" in meta and "nonce" in meta else None
    except (KeyError, json.JSONDecodeError) as err:
        raise PayloadError(f"schema: claim record unreadable ({err})") from None
    if not isinstance(claim, dict) or not isinstance(signature, bytes):
        raise PayloadError("schema: claim must be a JSON object and the signature bytes")
    return Upload(site, from_8bit(tensors["images"]), tensors["labels"], claim, signature, signed_round)
