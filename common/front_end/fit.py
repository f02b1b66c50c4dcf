"""The server's model on a front end: a linear head fitted in closed form to a set's (soft) labels.

Ridge regression of the centred log soft labels (the releasing head's logits up to scale) on the
set's features: the minimum-norm fit that gradient descent from zero reaches only after many
steps, in one solve. Hard labels fall back to centred one-hot targets (a least-squares classifier).
"""

from __future__ import annotations

import torch

from fedsynth.common.data import to_pixel_space
from fedsynth.common.front_end.base import FrontEnd

RIDGE = 1e-2


class FrontEndClassifier(torch.nn.Module):
    """front end → head (linear, or the CNN of `cnn_head.py`), taking the pixel ConvNet's [-1, 1] input so that
    `fedsynth.common.evaluation.accuracy` applies."""

    def __init__(self, front_end: FrontEnd, head: torch.nn.Module) -> None:
        super().__init__()
        self.front_end, self.head = front_end, head

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the front end's features (`front_end_accuracies` computes them once for many models)."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.front_end(to_pixel_space(x)))


def targets(labels: torch.Tensor, num_classes: int, soft_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Centred regression targets: log soft labels (logits up to a shift), else one-hot."""
    if soft_labels is not None:
        scores = soft_labels.double().clamp_min(1e-12).log()
    else:
        scores = torch.nn.functional.one_hot(labels, num_classes).double()
    return scores - scores.mean(1, keepdim=True)


def fit_head(front_end: FrontEnd, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             soft_labels: torch.Tensor | None = None, weights: torch.Tensor | None = None,
             ridge: float = RIDGE) -> FrontEndClassifier:
    """Weighted ridge regression of the targets on [φ(images) | 1]; `weights` (≥ 0, one per image) scale each
    image's squared error, as they scale its loss in the ConvNet's training."""
    front_end = front_end.cpu().eval()
    phi = front_end.features(images.cpu()).double()
    phi = torch.cat([phi, phi.new_ones(phi.shape[0], 1)], 1)
    y = targets(labels.cpu(), num_classes, None if soft_labels is None else soft_labels.cpu())
    if weights is not None:
        keep = weights.cpu() > 0
        phi, y, w = phi[keep], y[keep], weights.cpu()[keep].double()
    else:
        w = torch.ones(phi.shape[0], dtype=torch.float64)
    n, d = phi.shape
    if n <= d:  # dual form: (ΦᵀWΦ + λI)⁻¹ΦᵀW = Φᵀ(WΦΦᵀ + λI)⁻¹W
        coef = phi.T @ torch.linalg.solve(w[:, None] * (phi @ phi.T) + ridge * torch.eye(n, dtype=phi.dtype),
                                          w[:, None] * y)
    else:
        coef = torch.linalg.solve(phi.T @ (w[:, None] * phi) + ridge * torch.eye(d, dtype=phi.dtype),
                                  phi.T @ (w[:, None] * y))
    head = torch.nn.Linear(d - 1, num_classes)
    with torch.no_grad():
        head.weight.copy_(coef[:-1].T.float())
        head.bias.copy_(coef[-1].float())
    return FrontEndClassifier(front_end, head).eval()


def fit_site_maps(front_end: FrontEnd, images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor,
                  sites: torch.Tensor, num_sites: int, num_classes: int) -> list[torch.Tensor]:
    """Each site's head fitted to its own images of a pool (`sites` [N]: each image's site), as a map
    [K, D + 1] (weights | bias): what the server's vote and consensus join."""
    maps = []
    for site in range(num_sites):
        part = sites == site
        head = fit_head(front_end, images[part], labels[part], num_classes, soft_labels[part]).head
        maps.append(torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1))
    return maps
