"""The global model of a front-end round: a linear head on the sites' front end, in closed form.

When every accepted site released its noisy class counts, the sites' heads (each recovered from
its own set) are combined by pairwise consensus (`fedsynth.common.front_end.consensus`), which keeps what
each site knows about the class pairs it held; otherwise one ridge head is fitted to the union.
A site's counts weigh its head, so they are capped at the records its sample rate implies
(head-batch / q, the round's head-batch): a site cannot outweigh the others by claiming more.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedsynth.common.front_end import build_front_end
from fedsynth.common.front_end.consensus import fit_consensus
from fedsynth.common.front_end.fit import FrontEndClassifier, fit_head
from fedsynth.common.payload import Upload

def capped_counts(upload: Upload, head_batch: float) -> torch.Tensor:
    """The site's noisy class counts (≥ 0), scaled down to total at most head-batch / q."""
    counts = torch.tensor(upload.claim.class_counts, dtype=torch.float64).clamp_min(0.0)
    cap = head_batch / upload.claim.sample_rate
    total = float(counts.sum())
    return counts * (cap / total) if total > cap else counts


def consensus_inputs(uploads: Sequence[Upload], head_batch: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pooled image its site's index, and per site its capped counts: what the pool file keeps so that
    `fedsynth evaluate` refits the round's consensus head."""
    sites = torch.cat([torch.full((len(u.labels),), i, dtype=torch.long) for i, u in enumerate(uploads)])
    return sites, torch.stack([capped_counts(u, head_batch) for u in uploads])


def fit_front_end_model(front_end: str, uploads: Sequence[Upload], num_classes: int,
                        image_shape: tuple[int, int, int], head_batch: float, weights: torch.Tensor | None = None,
                        union: bool = False) -> tuple[FrontEndClassifier, tuple[torch.Tensor, torch.Tensor] | None]:
    """The round's head, and the (sites, counts) it was combined by: None for the union fit (asked for with
    `union`, or because a site sent no counts)."""
    fe = build_front_end(front_end, image_shape)
    images = torch.cat([u.images for u in uploads])
    labels = torch.cat([u.labels for u in uploads])
    soft = torch.cat([u.soft_labels for u in uploads])
    if not union and all(u.claim.class_counts is not None for u in uploads):
        sites, counts = consensus_inputs(uploads, head_batch)
        return fit_consensus(fe, images, labels, soft, sites, counts, num_classes), (sites, counts)
    return fit_head(fe, images, labels, num_classes, soft, weights), None
