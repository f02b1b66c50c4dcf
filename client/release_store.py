"""The releases a run keeps for its replay passes, and their place in the run's checkpoint.

A release is what one image update saw: the network's parameters, the augmentation views and
the noised class gradients. All of it is post-processing of the DP releases, so keeping it
costs no privacy; it stays in the site's checkpoint folder and never leaves the site. Each
checkpoint writes only the releases made since the one before (one safetensors file per
checkpoint, named by the iteration it completes), so a crash and resume replays exactly the
releases a straight run would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedsynth.common.augment import AugmentParams

FILE_PREFIX = "releases-"


@dataclass
class Release:
    """One release as the image update saw it."""

    params: dict[str, torch.Tensor]
    views: AugmentParams | None
    targets: list[torch.Tensor]


class ReleaseStore:
    """Releases in the order they were made; `save` and `load` move them through a checkpoint folder."""

    def __init__(self) -> None:
        self.releases: list[Release] = []
        self._saved = 0  # releases already on disk

    def __len__(self) -> int:
        return len(self.releases)

    def add(self, params: dict[str, torch.Tensor], views: AugmentParams | None, targets: list[torch.Tensor]) -> None:
        """Keep a detached copy: the network's parameters move on after the release."""
        self.releases.append(Release({n: p.detach().clone() for n, p in params.items()}, views,
                                     [t.detach() for t in targets]))

    def save(self, folder: Path, iteration: int) -> None:
        """Write the releases made since the last save, as the file of the checkpoint at `iteration`."""
        tensors: dict[str, torch.Tensor] = {}
        for i, release in enumerate(self.releases[self._saved:]):
            tensors.update({f"{i}/params/{n}": p.cpu().contiguous() for n, p in release.params.items()})
            tensors.update({f"{i}/targets/{j:04d}": t.cpu().contiguous() for j, t in enumerate(release.targets)})
            if release.views is not None:
                tensors.update({f"{i}/views/{f.name}": getattr(release.views, f.name).cpu().contiguous()
                                for f in fields(AugmentParams)})
        tmp = folder / f"{FILE_PREFIX}{iteration:08d}.partial"
        save_file(tensors, str(tmp))
        os.replace(tmp, folder / f"{FILE_PREFIX}{iteration:08d}.safetensors")
        self._saved = len(self.releases)

    @classmethod
    def load(cls, folder: Path, iteration: int, names: list[str], device: torch.device) -> "ReleaseStore":
        """The releases of the checkpoints up to `iteration` (later files, from a crash mid-checkpoint, are dropped)."""
        store = cls()
        for path in sorted(folder.glob(f"{FILE_PREFIX}*.safetensors")):
            if int(path.stem[len(FILE_PREFIX):]) > iteration:
                path.unlink()
                continue
            tensors = load_file(str(path), device=str(device))
            count = len({key.split("/")[0] for key in tensors})
            for i in range(count):
                views = None
                if f"{i}/views/affine" in tensors:
                    views = AugmentParams(**{f.name: tensors[f"{i}/views/{f.name}"] for f in fields(AugmentParams)})
                targets = [tensors[k] for k in sorted(k for k in tensors if k.startswith(f"{i}/targets/"))]
                store.releases.append(Release({n: tensors[f"{i}/params/{n}"] for n in names}, views, targets))
        store._saved = len(store.releases)
        return store
