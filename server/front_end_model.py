"""The global model of a front-end round: the sites' heads on their front end, each recovered in closed form.

When every accepted site released its noisy class counts, the sites' heads (each recovered from its own
set) are joined by the server's `aggregation`: `vote` (the default; `fedsynth.common.front_end.vote`: each
class scored by the sites that held it) or `consensus` (one linear head, `fedsynth.common.front_end.consensus`);
otherwise, or with `union`, one ridge head is fitted to the union of the sets.
A site's counts weigh its head, so they are capped at the records its sample rate implies
(head-batch / q, the round's head-batch): a site cannot outweigh the others by claiming more.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedsynth.common.front_end import build_front_end
from fedsynth.common.front_end.consensus import fit_consensus
from fedsynth.common.front_end.fit import FrontEndClassifier, fit_head
from fedsynth.common.front_end.vote import FrontEndVote, fit_vote
from fedsynth.common.payload import Upload

AGGREGATIONS = ("vote", "consensus", "union")  # the server's `aggregation` key; the first is the default


def capped_counts(upload: Upload, head_batch: float) -> torch.Tensor:
    """The site's noisy class counts (≥ 0), scaled down to total at most head-batch / q."""
    counts = torch.tensor(upload.claim.class_counts, dtype=torch.float64).clamp_min(0.0)
    cap = head_batch / upload.claim.sample_rate
    total = float(counts.sum())
    return counts * (cap / total) if total > cap else counts


def consensus_inputs(uploads: Sequence[Upload], head_batch: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pooled image its site's index, and per site its capped counts: what the pool file keeps so that
    `fedsynth evaluate` refits the round's vote or consensus."""
    sites = torch.cat([torch.full((len(u.labels),), i, dtype=torch.long) for i, u in enumerate(uploads)])
    return sites, torch.stack([capped_counts(u, head_batch) for u in uploads])


def fit_front_end_model(front_end: str, uploads: Sequence[Upload], num_classes: int,
                        image_shape: tuple[int, int, int], head_batch: float, weights: torch.Tensor | None = None,
                        aggregation: str = AGGREGATIONS[0]) -> tuple[FrontEndClassifier | FrontEndVote, str, dict]:
    """The round's model, the aggregation that made it (`union` when a site sent no counts) and what the pool
    file keeps to refit it: per image its site and per site its capped counts (consensus and vote), and per
    site the temperature of its soft labels (vote: multiplied back into each recovered head)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {', '.join(AGGREGATIONS)}")
    fe = build_front_end(front_end, image_shape)
    images = torch.cat([u.images for u in uploads])
    labels = torch.cat([u.labels for u in uploads])
    soft = torch.cat([u.soft_labels for u in uploads])
    if aggregation == "union" or any(u.claim.class_counts is None for u in uploads):
        return fit_head(fe, images, labels, num_classes, soft, weights), "union", {}
    sites, counts = consensus_inputs(uploads, head_batch)
    if aggregation == "consensus":
        return fit_consensus(fe, images, labels, soft, sites, counts, num_classes), "consensus", \
            {"sites": sites, "class_counts": counts}
    if any(u.claim.temperature is None for u in uploads):  # the server's checks refuse such uploads
        raise ValueError("every site's claim must give its soft labels' temperature for the vote")
    temperatures = torch.tensor([u.claim.temperature for u in uploads], dtype=torch.float64)
    return fit_vote(fe, images, labels, soft, sites, counts, num_classes, temperatures), "vote", \
        {"sites": sites, "class_counts": counts, "temperatures": temperatures}
