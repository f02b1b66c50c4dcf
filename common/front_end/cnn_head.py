"""A small CNN over a front end's feature map: the convolutional head a server may train beside the linear one.

conv 3×3 → group norm → ReLU → max-pool → linear, over the front end's channels (for the ScatterNet, 81
scattering channels at a quarter of the image's resolution). The linear head is fitted in closed form; this
one is trained by SGD on a set's (soft) labels, the cross-entropy to each image's distribution, each image's
loss scaled by its pool weight. It sees only released sets, so it costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedsynth.common.front_end.base import FrontEnd
from fedsynth.common.front_end.fit import FrontEndClassifier


@dataclass(frozen=True, kw_only=True)
class CnnHeadConfig:
    """How the CNN head is built and trained: SGD with momentum, a cosine rate, full passes over the set."""

    width: int = 64
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.05
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        if min(self.width, self.epochs, self.batch_size) < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("the CNN head needs positive width, epochs, batch size and rate, and weight decay ≥ 0")


class ChannelCNN(nn.Module):
    """conv 3×3 (`width` filters) → group norm → ReLU → 2×2 max-pool → linear, on a [C, H, W] feature map."""

    def __init__(self, map_shape: tuple[int, int, int], num_classes: int, width: int) -> None:
        super().__init__()
        channels, height, wide = map_shape
        self.map_shape = (channels, height, wide)
        self.features = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1),
                                      nn.GroupNorm(8 if width % 8 == 0 else 1, width), nn.ReLU(),
                                      nn.MaxPool2d(2) if min(height, wide) >= 2 else nn.Identity())
        pooled = (height // 2) * (wide // 2) if min(height, wide) >= 2 else height * wide
        self.classifier = nn.Linear(width * pooled, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(features.view(-1, *self.map_shape)).flatten(1))


def train_cnn_head(front_end: FrontEnd, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   soft_labels: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                   config: CnnHeadConfig = CnnHeadConfig(), seed: int = 0) -> FrontEndClassifier:
    """A CNN head trained on the front end's features of `images` (computed once) toward their soft labels, else
    their one-hot labels; seeded init and order."""
    front_end = front_end.cpu().eval()
    phi = front_end.features(images.cpu()).float()
    goal = (F.one_hot(labels.cpu(), num_classes).float() if soft_labels is None
            else soft_labels.cpu().float())
    scale = torch.ones(len(phi)) if weights is None else weights.cpu().float()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = ChannelCNN(front_end.feature_map_shape, num_classes, config.width)
    opt = torch.optim.SGD(head.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(phi) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    head.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(phi), generator=gen)
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = -(goal[idx] * F.log_softmax(head(phi[idx]), 1)).sum(1)
            (scale[idx] * loss).mean().backward()
            opt.step()
            sched.step()
    return FrontEndClassifier(front_end, head.eval()).eval()
