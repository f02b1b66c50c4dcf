"""The global model of a front-end round: the sites' heads on their front end, each recovered in closed form.

When every accepted site released its noisy class counts, the sites' heads (each recovered from its own
set) are joined by the server's `aggregation`: `gated` (the default; `fedsynth.common.front_end.vote` with
each site's say gated per input by how likely the input is among its records), `vote` (each class scored
by the sites that held it) or `consensus` (one linear head, `fedsynth.common.front_end.consensus`);
otherwise, or with `union`, one ridge head is fitted to the union of the sets.
A site's counts weigh its head, so they are capped at the records its sample rate implies
(head-batch / q, the round's head-batch): a site cannot outweigh the others by claiming more.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedsynth.common.front_end import build_front_end
from fedsynth.common.front_end.fit import FrontEndClassifier, fit_head, fit_site_maps
from fedsynth.common.front_end.join import JOIN_RULES, join_site_maps
from fedsynth.common.front_end.vote import FrontEndVote
from fedsynth.common.payload import Upload

AGGREGATIONS = (*JOIN_RULES, "union")  # the server's `aggregation` key; the first is the default


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


def fit_front_end_models(front_end: str, uploads: Sequence[Upload], num_classes: int,
                         image_shape: tuple[int, int, int], head_batch: float, weights: torch.Tensor | None = None,
                         aggregations: Sequence[str] = AGGREGATIONS[:1]
                         ) -> tuple[dict[str, FrontEndClassifier | FrontEndVote], dict]:
    """The round's model under each of `aggregations` (the first is the round's own), each site's head fitted
    once for all of them, and what the pool file keeps to refit the first: per image its site and per site its
    capped counts (gated, vote, consensus), per site the temperature of its soft labels (gated, vote: multiplied
    back into each recovered head). With a site that sent no counts only `union` can be made, and it replaces
    the others."""
    unknown = [a for a in aggregations if a not in AGGREGATIONS]
    if unknown or not aggregations:
        raise ValueError(f"unknown aggregation {unknown[:1]!r}; choose from {', '.join(AGGREGATIONS)}")
    fe = build_front_end(front_end, image_shape)
    images = torch.cat([u.images for u in uploads])
    labels = torch.cat([u.labels for u in uploads])
    soft = torch.cat([u.soft_labels for u in uploads])
    if any(u.claim.class_counts is None for u in uploads):
        aggregations = ["union"]
    models: dict[str, FrontEndClassifier | FrontEndVote] = {}
    kept: dict = {}
    joined = [a for a in aggregations if a in JOIN_RULES]
    if joined:
        sites, counts = consensus_inputs(uploads, head_batch)
        maps = fit_site_maps(fe, images, labels, soft, sites, len(uploads), num_classes)
        temperatures = None
        if any(JOIN_RULES[a] for a in joined):
            if any(u.claim.temperature is None for u in uploads):  # the server's checks refuse such uploads
                raise ValueError("every site's claim must give its soft labels' temperature for the vote")
            temperatures = torch.tensor([u.claim.temperature for u in uploads], dtype=torch.float64)
        models.update({a: join_site_maps(fe, maps, counts, a, temperatures) for a in joined})
        if aggregations[0] in JOIN_RULES:
            kept = {"sites": sites, "class_counts": counts}
            if JOIN_RULES[aggregations[0]]:
                kept["temperatures"] = temperatures
    if "union" in aggregations:
        models["union"] = fit_head(fe, images, labels, num_classes, soft, weights)
    return {name: models[name] for name in aggregations}, kept
