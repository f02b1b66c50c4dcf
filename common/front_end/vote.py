"""One model from many label-skewed sites' heads: each class's probability voted by the sites that held it.

A site's DP head knows class y as well as its data held y. So the round's model keeps every site's head
(each recovered from its own set, `fit_head`) and scores class y of an input x by

    score_y(x) = Σ_s w_sy · p_s(y | x),   w_sy = n_sy / Σ_s' n_s'y,

with p_s the site's own softmax, tempered (its recovered logits times the soft labels' temperature, which
the recovery divides out, times `SITE_LOGIT_SCALE`) and n_sy the site's released noisy class counts
(`Claim.class_counts`, ≥ 0). A site with no records of y has no say on y. Unlike the pairwise consensus
(`consensus.py`), which asks one linear head to agree with all sites, the vote is a mixture of the sites'
heads and not itself linear; on the same ten DP heads it scores above the consensus (bench/RESULTS.md).

The gated vote (`gate_iterations` > 0) weighs each site per input instead of per class. When sites differ
only in their label mix (p_s(y | x) = π_s(y) p(x | y) / p_s(x)), the pooled posterior is exactly the mixture
Σ_s g_s(x) p_s(y | x) with gate g_s(x) = P(x came from site s) ∝ Σ_y w_sy p(y | x): how much of the classes
that x looks like the site held. The gate needs the posterior it produces, so it starts from the class-wise
vote and iterates to that fixed point; the heads and counts it uses are the same released ones.

A DP head is over-confident on inputs unlike its own records, and a mixture follows its most confident
member; tempering every site's logits by `SITE_LOGIT_SCALE` before its softmax lifts the gated vote on every
measured federation (bench/RESULTS.md); the exact recovery above assumes untempered heads. A site's own
argmax, and so a one-site vote's, is unchanged.
"""

from __future__ import annotations

import torch

from fedsynth.common.data import to_pixel_space
from fedsynth.common.front_end.base import FrontEnd

GATE_ITERATIONS = 10  # of the gated vote: enough to settle on the measured federations (bench/RESULTS.md)
SITE_LOGIT_SCALE = 0.5  # each site's recovered logits are tempered by this in the vote (bench/RESULTS.md)


def vote_weights(counts: torch.Tensor) -> torch.Tensor:
    """w [S, K]: each site's share of each class's (noisy, clamped at 0) counts; a class no site counted
    is shared equally."""
    n = counts.double().clamp_min(0.0)
    total = n.sum(0)
    return torch.where(total > 0, n / total.clamp_min(1e-300), torch.full_like(n, 1.0 / n.shape[0]))


def vote_scores(probabilities: torch.Tensor, weights: torch.Tensor, gate_iterations: int = 0) -> torch.Tensor:
    """Class scores [N, K] from the sites' posteriors `probabilities` [N, S, K] and `weights` [S, K]: the
    class-wise vote, then `gate_iterations` rounds of gating each site by g_s(x) ∝ Σ_y w_sy score_y(x)."""
    weights = weights.to(probabilities.dtype)
    scores = (probabilities * weights).sum(1)
    for _ in range(gate_iterations):
        guess = scores / scores.sum(1, keepdim=True).clamp_min(1e-30)
        gate = guess @ weights.T  # [N, S]
        gate = gate / gate.sum(1, keepdim=True).clamp_min(1e-30)
        scores = (gate.unsqueeze(2) * probabilities).sum(1)
    return scores


class FrontEndVote(torch.nn.Module):
    """front end → every site's linear head → the class-wise (or gated) vote; returns log-scores normalised over
    the classes (log-probabilities), taking the pixel ConvNet's [-1, 1] input like `FrontEndClassifier`."""

    def __init__(self, front_end: FrontEnd, heads: torch.nn.Linear, weights: torch.Tensor,
                 gate_iterations: int = 0) -> None:
        super().__init__()
        self.front_end, self.heads = front_end, heads  # heads: D → S·K logits, site-major
        self.register_buffer("weights", weights.float())  # [S, K]
        self.gate_iterations = gate_iterations

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The vote's log-scores from the front end's features."""
        sites, classes = self.weights.shape
        logits = self.heads(features).view(-1, sites, classes)
        scores = vote_scores(torch.softmax(logits, -1), self.weights, self.gate_iterations)
        return torch.log(scores.clamp_min(1e-30)) - torch.log(scores.sum(1, keepdim=True).clamp_min(1e-30))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.front_end(to_pixel_space(x)))

    @classmethod
    def from_maps(cls, front_end: torch.nn.Module, maps: list[torch.Tensor], counts: torch.Tensor,
                  gate_iterations: int = 0) -> "FrontEndVote":
        """The vote of the site maps `maps` [K, D + 1] each (weights | bias, at the sites' own scale) under
        `counts` [S, K]."""
        joint = torch.cat(maps).float()
        heads = torch.nn.Linear(joint.shape[1] - 1, joint.shape[0])
        with torch.no_grad():
            heads.weight.copy_(joint[:, :-1])
            heads.bias.copy_(joint[:, -1])
        return cls(front_end, heads, vote_weights(counts), gate_iterations).eval()


def vote_of_maps(front_end: torch.nn.Module, maps: list[torch.Tensor], counts: torch.Tensor,
                 temperatures: torch.Tensor, gate_iterations: int = 0) -> FrontEndVote:
    """The vote of site maps recovered from soft labels at `temperatures` [S], each map scaled back by its own
    temperature and tempered by `SITE_LOGIT_SCALE`; `front_end` is the round's `FrontEnd` (the benches pass an
    identity to vote on features they computed once)."""
    scaled = [m * (float(t) * SITE_LOGIT_SCALE) for m, t in zip(maps, temperatures)]
    return FrontEndVote.from_maps(front_end.cpu().eval(), scaled, counts, gate_iterations)

