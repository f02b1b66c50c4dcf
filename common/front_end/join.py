"""The rules a round may join its label-skewed sites' heads by, each site's head recovered from its own set.

`gated` and `vote` (`vote.py`) keep every site's head and mix their softmaxes; `consensus` (`consensus.py`)
makes one linear head. The server builds the round's model with these, and `fedsynth evaluate` rebuilds it
from the round's pool file, which records the rule.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedsynth.common.front_end.base import FrontEnd
from fedsynth.common.front_end.consensus import consensus_of_maps
from fedsynth.common.front_end.fit import FrontEndClassifier, fit_site_maps
from fedsynth.common.front_end.vote import GATE_ITERATIONS, FrontEndVote, vote_of_maps

# each rule, and whether it needs each site's soft-label temperature (the votes scale the recovered heads by it)
JOIN_RULES: dict[str, bool] = {"gated": True, "vote": True, "consensus": False}


def join_site_maps(front_end: FrontEnd, maps: Sequence[torch.Tensor], counts: torch.Tensor, rule: str,
                   temperatures: torch.Tensor | None = None) -> FrontEndClassifier | FrontEndVote:
    """The model `rule` makes of site maps [K, D + 1] under their capped noisy `counts` [S, K]."""
    if rule not in JOIN_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {', '.join(JOIN_RULES)}")
    if not JOIN_RULES[rule]:
        return consensus_of_maps(front_end, maps, counts)
    if temperatures is None:
        raise ValueError(f"the {rule} rule needs each site's soft-label temperature")
    return vote_of_maps(front_end, list(maps), counts, temperatures, GATE_ITERATIONS if rule == "gated" else 0)


def fit_joined(front_end: FrontEnd, images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor,
               sites: torch.Tensor, counts: torch.Tensor, num_classes: int, rule: str,
               temperatures: torch.Tensor | None = None) -> FrontEndClassifier | FrontEndVote:
    """Each site's head fitted to its own images of a pool (`sites` [N] indexes the rows of `counts` [S, K] and of
    `temperatures` [S]), joined by `rule`."""
    maps = fit_site_maps(front_end, images, labels, soft_labels, sites, counts.shape[0], num_classes)
    return join_site_maps(front_end, maps, counts, rule, temperatures)
