"""The pixel engine's whole DP mechanism, built once per run: per class a Poisson batch, clipped per-example
gradients summed, plus Gaussian noise.

One object holds the site's records (class-sorted), the sample rate, σ, C and the run's secret. Each
release draws every class's Poisson mask at rate q, computes per-example gradients through one Opacus
`GradSampleModule` on the run's one network, clips, sums per class and adds N(0, σ²C²). That is one
subsampled Gaussian release per class (the classes are disjoint), as the ledger accounts. Every
iteration loads a fresh public draw of the parameters into the same network, so the hooks are set up once.
The records enter the engine only here.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedsynth.client.noisy_gradient import NoisyClassGradients
from fedsynth.client.random_streams import generator
from fedsynth.common.augment import Augmenter, AugmentParams, per_example
from fedsynth.common.privacy.accounting import Mechanism

SECRET_STRIDE = 7919  # iteration t samples with secret + stride·t and draws noise with secret + stride·t + 1


def class_groups(num_classes: int, per_pass: int, device: torch.device) -> list[list[int]]:
    """Classes released together from one per-example pass, in class order (all at once on a GPU, else one)."""
    n = per_pass or (num_classes if device.type == "cuda" else 1)
    return [list(range(c, min(c + n, num_classes))) for c in range(0, num_classes, n)]


class PoissonClassRelease:
    """ĝ_c = Σ_{i ∈ Poisson(D_c, q)} clip_C(∇θ ℓ(f_θ(x_i), c)) + N(0, σ²C²I) for every class c, one call per release."""

    def __init__(self, network: torch.nn.Module, by_class: Sequence[torch.Tensor], mechanism: Mechanism, secret: int,
                 released: Sequence[str], groups: Sequence[Sequence[int]], augmenter: Augmenter | None) -> None:
        """`network` is the run's one network (its parameters are reloaded for every draw); `by_class[c]` holds
        class c's records in model space, on the device the releases run on."""
        self.counts = [int(x.shape[0]) for x in by_class]
        self.offsets = [sum(self.counts[:c]) for c in range(len(by_class))]
        self.real = torch.cat(list(by_class))  # class-sorted; class c's records start at offsets[c]
        self.sample_rate = mechanism.sample_rate
        self.secret = secret
        self.groups = [list(g) for g in groups]
        self.augmenter = augmenter
        self.gradients = NoisyClassGradients(network, mechanism.clip_norm, mechanism.noise_multiplier, None, released)
        self._sampling: torch.Generator | None = None

    def start_iteration(self, t: int) -> None:
        """Seed iteration t's Poisson sampling and noise from the run's secret: a resumed run repeats them."""
        self._sampling = generator(self.secret + SECRET_STRIDE * t)
        self.gradients.generator = generator(self.secret + SECRET_STRIDE * t + 1, self.real.device)

    def __call__(self, views: Sequence[AugmentParams | None]) -> list[torch.Tensor]:
        """One release at the network's current parameters: a tensor [classes, *p.shape] per released parameter.
        `views[c]` is the public augmentation class c's batch sees (None without augmentation)."""
        if self._sampling is None:
            raise RuntimeError("start_iteration must seed the release's randomness first")
        masks = [torch.rand(n, generator=self._sampling) < self.sample_rate for n in self.counts]
        parts = []
        for group in self.groups:
            picked = [masks[c].nonzero().squeeze(1) + self.offsets[c] for c in group]
            sizes = [int(i.numel()) for i in picked]
            x = self.real.index_select(0, torch.cat(picked).to(self.real.device))
            if self.augmenter is not None:
                x = self.augmenter.apply(x, per_example([views[c] for c in group], sizes))  # each class its own view
            labels = torch.repeat_interleave(torch.as_tensor(group), torch.as_tensor(sizes)).to(self.real.device)
            parts.append(self.gradients(x, labels, group))
        return [torch.cat(per_param) for per_param in zip(*parts)]
