"""One head from many sites' heads when the sites hold different label mixes (pairwise consensus).

A site's softmax head tells classes c and c' apart only as well as its data held both: a site with
no c' records says nothing about c against c'. So the server recovers each site's head from its
set (`fit_head` on that set alone), and takes as the global head V the one whose logit *differences*
agree best with every site's, each pair weighted by how much of both classes the site held:

    min_V  Σ_s Σ_{c<c'} w_s(c, c') ‖(V_c − V_c') − (H_s,c − H_s,c')‖²,   w_s(c, c') = n_sc n_sc' / (n_sc + n_sc'),

with n_sc the site's released noisy class counts (`Claim.class_counts`, clamped at 0). The
minimiser solves L V = Σ_s L_s H_s with L_s the Laplacian of site s's pair weights and L = Σ_s L_s:
a K×K system. A small pull towards the count-weighted mean head settles classes no site saw
together. Softmax ignores a shift shared by all classes, which is exactly what the differences leave free.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedsynth.common.front_end.base import FrontEnd
from fedsynth.common.front_end.fit import FrontEndClassifier
from fedsynth.common.front_end.vote import vote_weights

PULL = 1e-3  # weight of the mean head, relative to the mean diagonal of L


def pair_laplacian(counts: torch.Tensor) -> torch.Tensor:
    """The Laplacian of the pair weights n_c n_c' / (n_c + n_c') of one site's (noisy) class counts."""
    n = counts.double().clamp_min(0.0)
    total = n[:, None] + n[None, :]
    w = torch.where(total > 0, n[:, None] * n[None, :] / total.clamp_min(1e-300), torch.zeros_like(total))
    w.fill_diagonal_(0.0)
    return torch.diag(w.sum(1)) - w


def consensus(heads: Sequence[torch.Tensor], counts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The consensus of per-site maps `heads` [K, D] (weights and bias as columns) under `counts` [K] each."""
    if not heads or len(heads) != len(counts):
        raise ValueError("need one class-count vector per head, and at least one head")
    laplacians = [pair_laplacian(c) for c in counts]
    total = sum(laplacians)
    share = vote_weights(torch.stack([c.double() for c in counts]))  # [S, K]: each site's share of each class
    mean = sum(share[s][:, None] * heads[s].double() for s in range(len(heads)))
    pull = PULL * max(float(torch.diagonal(total).mean()), 1e-12)
    rhs = sum(lap @ h.double() for lap, h in zip(laplacians, heads)) + pull * mean
    k = total.shape[0]
    return torch.linalg.solve(total + pull * torch.eye(k, dtype=total.dtype), rhs)


def consensus_of_maps(front_end: FrontEnd, maps: Sequence[torch.Tensor], counts: torch.Tensor) -> FrontEndClassifier:
    """The consensus head of site maps [K, D + 1] under `counts` [S, K], on `front_end`."""
    joint = consensus(maps, list(counts)).float()
    head = torch.nn.Linear(joint.shape[1] - 1, joint.shape[0])
    with torch.no_grad():
        head.weight.copy_(joint[:, :-1])
        head.bias.copy_(joint[:, -1])
    return FrontEndClassifier(front_end.cpu().eval(), head).eval()

