"""A released synthetic set on disk: `synthetic.safetensors` (images, labels), `claim.json`, `synthetic.png`.

Images are float32 pixels in [0, 1] on the 8-bit grid (k/255), [N, C, H, W]; labels int64 [N].
The grid is what lets a site upload one byte per pixel with the hash unchanged. The claim
carries the mechanism parameters and the content hash of the tensors, which is what gets signed.
Nothing here unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

SET_FILE, CLAIM_FILE, PICTURE_FILE = "synthetic.safetensors", "claim.json", "synthetic.png"


@dataclass
class SyntheticSet:
    images: torch.Tensor
    labels: torch.Tensor
    claim: dict[str, Any]
    weights: torch.Tensor | None = None  # per-image training weights: a server's pool file keeps them

    @property
    def classes(self) -> list[str]:
        return list(self.claim.get("classes") or [str(c) for c in range(int(self.labels.max()) + 1)])


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] → uint8 levels (rounded): the wire form of a set, a quarter of float32's bytes."""
    return (images.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def from_8bit(levels: torch.Tensor) -> torch.Tensor:
    """uint8 levels → float32 pixels k/255; exact inverse of `to_8bit` on grid images."""
    return levels.to(torch.float32) / 255.0


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Snap pixels in [0, 1] to the 8-bit grid: post-processing, so it costs no privacy."""
    return from_8bit(to_8bit(images.cpu()))


def on_8bit_grid(images: torch.Tensor) -> bool:
    """True when every pixel is exactly some k/255, so the 8-bit wire form loses nothing."""
    return images.dtype == torch.float32 and torch.equal(quantise(images), images.cpu())


def content_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 over dtype, shape and bytes of both tensors: what a signature or ledger entry binds to."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def json_safe(value: Any) -> Any:
    """Replace ±∞/NaN floats by None so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic, strict-JSON write."""
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)


def save_synthetic_set(out_dir: str | os.PathLike, synthetic: SyntheticSet, picture: bool = True) -> Path:
    """Write the three files of a synthetic set into `out_dir` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = synthetic.images.detach().cpu().float().contiguous()
    labels = synthetic.labels.detach().cpu().long().contiguous()
    save_file({"images": images, "labels": labels}, str(out / SET_FILE), metadata={"format": "fedsynth-set/1"})
    write_json(out / CLAIM_FILE, synthetic.claim)
    if picture:
        from common.plots import save_image_grid

        save_image_grid(images, labels, synthetic.classes, out / PICTURE_FILE, title=_picture_title(synthetic.claim))
    return out


def _picture_title(claim: dict[str, Any]) -> str:
    eps = claim.get("epsilon")
    eps_text = "∞ (no noise)" if eps is None else f"{eps:.3g}"
    return f"{claim.get('dataset', '')}  ipc={claim.get('ipc')}  ε={eps_text}  δ={claim.get('delta', 0):g}"


def weights_problem(weights: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Why `weights` cannot weigh the images of `labels` in training (None when they can)."""
    if weights.shape != labels.shape or not weights.is_floating_point():
        return f"weights must be one float per image ({tuple(labels.shape)}), got {weights.dtype} {tuple(weights.shape)}"
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        return "weights must be finite and non-negative"
    return None


def load_synthetic_set(path: str | os.PathLike) -> SyntheticSet:
    """Read a set from its folder or its safetensors file (claim.json beside it, if any).

    A site's set holds `images` and `labels`; a server's pool file (`synthetic_pool.safetensors`)
    also `weights`, one per image, the weights the global model was trained with.
    """
    path = Path(path)
    file = path / SET_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no synthetic set at {file}")
    tensors = load_file(str(file))
    if not {"images", "labels"} <= set(tensors) <= {"images", "labels", "weights"}:
        raise ValueError(f"{file}: expected tensors 'images', 'labels' and optionally 'weights', found {sorted(tensors)}")
    weights = tensors.get("weights")
    if weights is not None and (problem := weights_problem(weights, tensors["labels"])):
        raise ValueError(f"{file}: {problem}")
    claim_file = file.parent / CLAIM_FILE
    claim = json.loads(claim_file.read_text()) if claim_file.exists() else {}
    return SyntheticSet(tensors["images"], tensors["labels"], claim, weights)
