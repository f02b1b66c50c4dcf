"""A released synthetic set on disk: `synthetic.safetensors` (images, labels, soft labels), `claim.json`,
`synthetic.png`.

Images are float32 pixels in [0, 1] on the 8-bit grid (k/255), [N, C, H, W]; labels int64 [N];
soft labels, when the set has them, float32 [N, classes], each row a distribution.
The grid is what lets a site upload one byte per pixel with the hash unchanged. The claim
carries the mechanism parameters and the content hash of the tensors, which is what gets signed.
Nothing here unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedsynth.common.claim import MAX_TEMPERATURE, Claim, ClaimError
from fedsynth.common.errors import FedsynthError, one_line
from fedsynth.common.front_end.join import JOIN_RULES
from fedsynth.common.files import read_regular_file

SET_FILE, CLAIM_FILE, PICTURE_FILE = "synthetic.safetensors", "claim.json", "synthetic.png"


class SetError(FedsynthError, ValueError):
    """A synthetic set file that cannot be used; the message names the file and the problem."""


@dataclass
class SyntheticSet:
    images: torch.Tensor
    labels: torch.Tensor
    claim: Claim | None  # None for a pool file or a set without a readable claim.json
    weights: torch.Tensor | None = None  # per-image training weights: a server's pool file keeps them
    soft_labels: torch.Tensor | None = None  # per image, the class distribution of the site's DP model
    # a vote or consensus pool file: per image the index of its site, and per site its (capped) released class counts
    sites: torch.Tensor | None = None
    class_counts: torch.Tensor | None = None
    temperatures: torch.Tensor | None = None  # per site, its soft labels' temperature: the round voted (vote.py)
    aggregation: str | None = None  # a joined pool's rule (`fedsynth.common.front_end.join`); None for other sets

    @property
    def classes(self) -> list[str]:
        if self.claim is not None:
            return list(self.claim.classes)
        return [str(c) for c in range(int(self.labels.max()) + 1 if self.labels.numel() else 0)]


def set_problem(images: Any, labels: Any, num_classes: int, image_shape: tuple[int, ...] | None = None,
                max_ipc: int | None = None) -> str | None:
    """Why `images`/`labels` are not a usable set (None when they are): dtypes, shapes, finite pixels in [0, 1],
    labels in range, at least one image and at most `max_ipc` per class. The server and `fedsynth evaluate` agree."""
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return "schema: images and labels must be tensors"
    if images.dtype != torch.float32:
        return f"dtype: images are {images.dtype}, expected float32"
    if labels.dtype != torch.int64:
        return f"dtype: labels are {labels.dtype}, expected int64"
    expected = "[N, C, H, W]" if image_shape is None else f"[N, {', '.join(map(str, image_shape))}]"
    if images.ndim != 4 or (image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape)):
        return f"shape: images are {tuple(images.shape)}, expected {expected}"
    if labels.shape != (images.shape[0],):
        return f"shape: {tuple(labels.shape)} labels for {images.shape[0]} images"
    if labels.numel() == 0:
        return "ipc: the set holds no images"
    if not bool(torch.isfinite(images).all()):
        return "values: images contain NaN or infinite values"
    if float(images.min()) < 0.0 or float(images.max()) > 1.0:
        return "values: pixels outside [0, 1]"
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        return f"labels: outside 0..{num_classes - 1}"
    most = int(torch.bincount(labels, minlength=num_classes).max())
    if max_ipc is not None and most > max_ipc:
        return f"ipc: {most} images in one class, at most {max_ipc} allowed"
    return None


MAX_SOFT_LABEL_ERROR = 1e-3  # how far a soft-label row's sum may stray from 1 (float32 rounding)


def soft_label_problem(soft_labels: Any, labels: torch.Tensor, num_classes: int) -> str | None:
    """Why `soft_labels` are not one class distribution per image (None when they are)."""
    if not isinstance(soft_labels, torch.Tensor) or soft_labels.dtype != torch.float32:
        return "soft labels: must be a float32 tensor"
    if soft_labels.shape != (labels.shape[0], num_classes):
        return f"soft labels: shape {tuple(soft_labels.shape)}, expected [{labels.shape[0]}, {num_classes}]"
    if not bool(torch.isfinite(soft_labels).all()) or bool((soft_labels < 0).any()):
        return "soft labels: must be finite and non-negative"
    if soft_labels.numel() and float((soft_labels.double().sum(1) - 1.0).abs().max()) > MAX_SOFT_LABEL_ERROR:
        return "soft labels: each row must sum to 1"
    return None


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


def content_hash(images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor | None = None) -> str:
    """SHA-256 over dtype, shape and bytes of the set's tensors: what a signature or ledger entry binds to."""
    digest = hashlib.sha256()
    for tensor in (images, labels) if soft_labels is None else (images, labels, soft_labels):
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


def write_text(path: Path, text: str) -> None:
    """Atomic write: readers see the old file or the whole new one."""
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic, strict-JSON write."""
    write_text(path, json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_synthetic_set(out_dir: str | os.PathLike, synthetic: SyntheticSet, picture: bool = True) -> Path:
    """Write the three files of a synthetic set into `out_dir` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = synthetic.images.detach().cpu().float().contiguous()
    labels = synthetic.labels.detach().cpu().long().contiguous()
    tensors = {"images": images, "labels": labels}
    if synthetic.soft_labels is not None:
        tensors["soft_labels"] = synthetic.soft_labels.detach().cpu().float().contiguous()
    save_file(tensors, str(out / SET_FILE), metadata={"format": "fedsynth-set/1"})
    if synthetic.claim is not None:
        write_text(out / CLAIM_FILE, synthetic.claim.to_json(indent=2) + "\n")
    if picture:
        from fedsynth.common.plots import save_image_grid

        try:  # the set may already be released: a picture that cannot be drawn must not fail the run
            save_image_grid(images, labels, synthetic.classes, out / PICTURE_FILE,
                            title=_picture_title(synthetic.claim))
        except Exception as err:  # noqa: BLE001 - the picture is for people; the set and claim are written
            print(f"fedsynth: could not draw {out / PICTURE_FILE} ({one_line(err, 200)})", file=sys.stderr)
    return out


def _picture_title(claim: Claim | None) -> str:
    if claim is None:
        return "synthetic set"
    eps_text = f"{claim.epsilon:.3g}" if claim.private else "∞ (no noise)"
    return f"{claim.dataset}  ipc={claim.ipc}  ε={eps_text}  δ={claim.delta:g}"


def weights_problem(weights: torch.Tensor, labels: torch.Tensor) -> str | None:
    """Why `weights` cannot weigh the images of `labels` in training (None when they can)."""
    if weights.shape != labels.shape or not weights.is_floating_point():
        return (f"weights must be one float per image ({tuple(labels.shape)}), "
                f"got {weights.dtype} {tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        return "weights must be finite and non-negative"
    return None


CONSENSUS = ("sites", "class_counts")  # a pool file's tensors for `fedsynth.common.front_end.consensus`
VOTE = "temperatures"  # with CONSENSUS: the round's model was `fedsynth.common.front_end.vote`
POOL_AGGREGATION = "aggregation"  # a pool file's metadata key: the rule that joined the sites' heads (JOIN_RULES)
MAX_POOL_SITES = 4096  # rows of class_counts: the vote holds one head per site


def consensus_problem(sites: torch.Tensor, counts: torch.Tensor, labels: torch.Tensor, classes: int) -> str | None:
    """Why `sites` (int64 [N], each image's site) and `class_counts` (float64 [S, classes]) cannot be used."""
    if sites.dtype != torch.int64 or sites.shape != labels.shape:
        return f"sites must be int64, one per image ({tuple(labels.shape)})"
    if counts.dtype != torch.float64 or counts.ndim != 2 or counts.shape[1] != classes or not 0 < counts.shape[0]:
        return f"class_counts must be float64 [sites, {classes}]"
    if counts.shape[0] > MAX_POOL_SITES:
        return f"class_counts holds {counts.shape[0]} sites, more than {MAX_POOL_SITES}"
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        return "class_counts must be finite and non-negative"
    if sites.numel() and (int(sites.min()) < 0 or int(sites.max()) >= counts.shape[0]):
        return f"sites must index the {counts.shape[0]} rows of class_counts"
    if bool((torch.bincount(sites, minlength=counts.shape[0]) == 0).any()):
        return "every site in class_counts must hold images"
    return None


def temperatures_problem(temperatures: torch.Tensor, counts: torch.Tensor) -> str | None:
    """Why `temperatures` (float64 [S], one per row of `class_counts`) cannot be used."""
    if temperatures.dtype != torch.float64 or temperatures.shape != counts.shape[:1]:
        return f"temperatures must be float64, one per site ({counts.shape[0]})"
    if not bool(torch.isfinite(temperatures).all()) or bool((temperatures <= 0).any()) \
            or bool((temperatures > MAX_TEMPERATURE).any()):
        return f"temperatures must lie in (0, {MAX_TEMPERATURE:g}]"
    return None


def load_synthetic_set(path: str | os.PathLike) -> SyntheticSet:
    """Read a set from its folder or its safetensors file (claim.json beside it, if any); a file that is
    not a set is a SetError naming it.

    A site's set holds `images` and `labels`; a server's pool file (`synthetic_pool.safetensors`)
    also `weights`, one per image, the weights the global model was trained with. A claim.json of
    another format is ignored (the set is still usable; its claim is not).
    """
    path = Path(path)
    file = path / SET_FILE if path.is_dir() else path
    if not file.is_file():
        raise SetError(f"no synthetic set at {file}")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise SetError(f"{file}: not a readable safetensors file ({one_line(err, 120)})") from None
    if not {"images", "labels"} <= set(tensors) <= {"images", "labels", "weights", "soft_labels", *CONSENSUS,
                                                             VOTE}:
        raise SetError(f"{file}: expected tensors 'images', 'labels' and optionally 'weights', 'soft_labels', "
                       f"'sites', 'class_counts' and 'temperatures', found {sorted(tensors)[:6]}")
    weights, soft = tensors.get("weights"), tensors.get("soft_labels")
    if weights is not None and (problem := weights_problem(weights, tensors["labels"])):
        raise SetError(f"{file}: {problem}")
    if soft is not None and (problem := soft_label_problem(soft, tensors["labels"], soft.shape[-1] if soft.ndim
                                                           else 0)):
        raise SetError(f"{file}: {problem}")
    sites, counts = tensors.get("sites"), tensors.get("class_counts")
    if (sites is None) != (counts is None) or (sites is not None and soft is None):
        raise SetError(f"{file}: 'sites' and 'class_counts' come together, with 'soft_labels'")
    if sites is not None and (problem := consensus_problem(sites, counts, tensors["labels"], soft.shape[-1])):
        raise SetError(f"{file}: {problem}")
    temperatures = tensors.get(VOTE)
    if temperatures is not None and sites is None:
        raise SetError(f"{file}: 'temperatures' comes with 'sites' and 'class_counts'")
    if temperatures is not None and (problem := temperatures_problem(temperatures, counts)):
        raise SetError(f"{file}: {problem}")
    aggregation = _pool_aggregation(file, sites is not None, temperatures is not None)
    claim_file = file.parent / CLAIM_FILE
    claim = None
    if claim_file.is_file():
        try:
            claim = Claim.from_json(read_regular_file(claim_file, 1 << 20))
        except (ClaimError, OSError):
            claim = None
    return SyntheticSet(tensors["images"], tensors["labels"], claim, weights, soft, sites, counts, temperatures,
                        aggregation)


def _pool_aggregation(file: Path, joined: bool, voted: bool) -> str | None:
    """The rule a pool file records (its metadata), checked against the tensors it holds; a file that records
    none is read as it was written before the rule was recorded: `vote` with temperatures, else `consensus`."""
    try:
        with safe_open(str(file), "pt") as handle:
            recorded = (handle.metadata() or {}).get(POOL_AGGREGATION)
    except (SafetensorError, OSError, ValueError) as err:
        raise SetError(f"{file}: not a readable safetensors file ({one_line(err, 120)})") from None
    if recorded is None:
        return None if not joined else "vote" if voted else "consensus"
    if recorded not in JOIN_RULES or not joined or JOIN_RULES[recorded] != voted:
        raise SetError(f"{file}: aggregation {one_line(recorded, 40)!r} does not match the file's tensors "
                       f"(one of {', '.join(JOIN_RULES)}, with 'sites' and 'class_counts'; the votes "
                       "with 'temperatures')")
    return recorded
