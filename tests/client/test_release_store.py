"""The kept releases survive a checkpoint exactly, and a file written after the last checkpoint is dropped."""

import torch

from fedsynth.client.release_store import ReleaseStore
from fedsynth.common.augment import Augmenter

NAMES = ["conv.weight", "fc.weight", "fc.bias"]


def _add(store: ReleaseStore, seed: int, with_views: bool = True) -> None:
    gen = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(3, 2, generator=gen) for n in NAMES}
    views = Augmenter().sample(gen, per_example=4) if with_views else None
    store.add(params, views, [torch.randn(10, 3, 2, generator=gen) for _ in NAMES])


def _same(a: ReleaseStore, b: ReleaseStore) -> bool:
    for x, y in zip(a.releases, b.releases, strict=True):
        if list(x.params) != list(y.params) or not all(torch.equal(x.params[n], y.params[n]) for n in NAMES):
            return False
        if not all(torch.equal(s, t) for s, t in zip(x.targets, y.targets, strict=True)):
            return False
        if (x.views is None) != (y.views is None):
            return False
        if x.views is not None and not torch.equal(x.views.affine, y.views.affine):
            return False
    return True


def test_checkpoints_write_only_new_releases_and_load_them_back_in_order(tmp_path):
    store = ReleaseStore()
    _add(store, 0)
    _add(store, 1, with_views=False)
    store.save(tmp_path, 1)
    _add(store, 2)
    store.save(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["releases-00000001.safetensors",
                                                          "releases-00000002.safetensors"]
    loaded = ReleaseStore.load(tmp_path, 2, NAMES, torch.device("cpu"))
    assert len(loaded) == 3 and _same(loaded, store)


def test_releases_after_the_resumed_checkpoint_are_dropped(tmp_path):
    store = ReleaseStore()
    _add(store, 0)
    store.save(tmp_path, 1)
    _add(store, 1)
    store.save(tmp_path, 2)  # written, but the crash came before the state that counts it
    first = ReleaseStore()
    _add(first, 0)
    loaded = ReleaseStore.load(tmp_path, 1, NAMES, torch.device("cpu"))
    assert len(loaded) == 1 and _same(loaded, first)
    assert not (tmp_path / "releases-00000002.safetensors").exists()


def test_a_kept_release_does_not_move_with_the_network(tmp_path):
    store = ReleaseStore()
    weight = torch.zeros(2, 2)
    store.add({"w": weight}, None, [torch.ones(1, 2, 2)])
    weight.add_(1.0)  # the network trains on after its release
    assert torch.equal(store.releases[0].params["w"], torch.zeros(2, 2))
