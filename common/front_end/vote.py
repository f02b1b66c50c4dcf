"""One model from many label-skewed sites' heads: each class's probability voted by the sites that held it.

A site's DP head knows class y as well as its data held y. So the round's model keeps every site's head
(each recovered from its own set, `fit_head`) and scores class y of an input x by

    score_y(x) = Σ_s w_sy · p_s(y | x),   w_sy = n_sy / Σ_s' n_s'y,

with p_s the site's own softmax (its recovered logits times the soft labels' temperature, which the
recovery divides out) and n_sy the site's released noisy class counts (`Claim.class_counts`, ≥ 0). A site
with no records of y has no say on y. Unlike the pairwise consensus (`consensus.py`), which asks one
linear head to agree with all sites, the vote is a mixture of the sites' heads and not itself linear; on
the same ten DP heads it scores above the consensus (bench/RESULTS.md).
"""

from __future__ import annotations

import torch

from fedsynth.common.data import to_pixel_space
from fedsynth.common.front_end.base import FrontEnd
from fedsynth.common.front_end.fit import fit_site_maps


def vote_weights(counts: torch.Tensor) -> torch.Tensor:
    """w [S, K]: each site's share of each class's (noisy, clamped at 0) counts; a class no site counted
    is shared equally."""
    n = counts.double().clamp_min(0.0)
    total = n.sum(0)
    return torch.where(total > 0, n / total.clamp_min(1e-300), torch.full_like(n, 1.0 / n.shape[0]))


class FrontEndVote(torch.nn.Module):
    """front end → every site's linear head → the class-wise vote; returns log-scores normalised over the
    classes (log-probabilities), taking the pixel ConvNet's [-1, 1] input like `FrontEndClassifier`."""

    def __init__(self, front_end: FrontEnd, heads: torch.nn.Linear, weights: torch.Tensor) -> None:
        super().__init__()
        self.front_end, self.heads = front_end, heads  # heads: D → S·K logits, site-major
        self.register_buffer("weights", weights.float())  # [S, K]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The vote's log-scores from the front end's features."""
        sites, classes = self.weights.shape
        logits = self.heads(features).view(-1, sites, classes)
        scores = (torch.softmax(logits, -1) * self.weights).sum(1)
        return torch.log(scores.clamp_min(1e-30)) - torch.log(scores.sum(1, keepdim=True).clamp_min(1e-30))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.front_end(to_pixel_space(x)))

    @classmethod
    def from_maps(cls, front_end: torch.nn.Module, maps: list[torch.Tensor], counts: torch.Tensor) -> "FrontEndVote":
        """The vote of the site maps `maps` [K, D + 1] each (weights | bias, at the sites' own scale) under
        `counts` [S, K]."""
        joint = torch.cat(maps).float()
        heads = torch.nn.Linear(joint.shape[1] - 1, joint.shape[0])
        with torch.no_grad():
            heads.weight.copy_(joint[:, :-1])
            heads.bias.copy_(joint[:, -1])
        return cls(front_end, heads, vote_weights(counts)).eval()


def fit_vote(front_end: FrontEnd, images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor,
             sites: torch.Tensor, counts: torch.Tensor, num_classes: int,
             temperatures: torch.Tensor) -> FrontEndVote:
    """Each site's head fitted to its own images of the pool (`sites` [N] indexes the rows of `counts` [S, K]
    and `temperatures` [S], the temperature of each site's soft labels), joined by `vote_weights`."""
    maps = fit_site_maps(front_end, images, labels, soft_labels, sites, counts.shape[0], num_classes)
    scaled = [m * float(t) for m, t in zip(maps, temperatures)]
    return FrontEndVote.from_maps(front_end.cpu().eval(), scaled, counts)
