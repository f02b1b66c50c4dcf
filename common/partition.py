"""Splitting one dataset over simulated sites: IID or Dirichlet(α) non-IID by label, with flwr-datasets."""

from __future__ import annotations

import torch

from fedsynth.common.data import ImageDataset


def partition_indices(labels: torch.Tensor, num_sites: int, site: int, scheme: str = "iid", alpha: float = 0.5,
                      seed: int = 0) -> torch.Tensor:
    """Indices of `site`'s records among `labels` (seeded, identical on every site and the server)."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if not 0 <= site < num_sites:
        raise ValueError(f"site {site} is not in 0..{num_sites - 1}")
    table = datasets.Dataset.from_dict({"label": labels.tolist(), "index": list(range(len(labels)))})
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_sites)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(num_partitions=num_sites, partition_by="label", alpha=alpha, seed=seed,
                                           min_partition_size=0, self_balancing=False)
    else:
        raise ValueError(f"unknown partition {scheme!r}: use iid or dirichlet")
    partitioner.dataset = table if scheme == "dirichlet" else table.shuffle(seed=seed)
    return torch.tensor(sorted(partitioner.load_partition(site)["index"]), dtype=torch.long)


def site_dataset(dataset: ImageDataset, num_sites: int, site: int, scheme: str = "iid", alpha: float = 0.5,
                 seed: int = 0) -> ImageDataset:
    part = dataset.subset(partition_indices(dataset.labels, num_sites, site, scheme, alpha, seed))
    part.name = f"{dataset.name}[site {site}/{num_sites}, {scheme}]"
    return part
