"""Reading synthetic sets from disk: a site's set, and a server's pool file with its per-image weights."""

import pytest
import torch
from safetensors.torch import save_file

from fedsynth.common.synthetic_set import POOL_AGGREGATION, SET_FILE, SetError, load_synthetic_set


def _write(path, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _set(n=6):
    return torch.rand(n, 1, 4, 4), torch.arange(n) % 3


def test_a_sites_set_has_no_weights(tmp_path):
    images, labels = _set()
    synthetic = load_synthetic_set(_write(tmp_path / SET_FILE, images=images, labels=labels).parent)
    assert torch.equal(synthetic.images, images) and torch.equal(synthetic.labels, labels)
    assert synthetic.weights is None and synthetic.claim is None


def test_a_pool_file_keeps_its_weights(tmp_path):
    images, labels = _set()
    weights = torch.tensor([0.0, 2.0, 1.0, 1.5, 0.5, 1.0])
    synthetic = load_synthetic_set(_write(tmp_path / "synthetic_pool.safetensors", images=images, labels=labels,
                                          weights=weights))
    assert torch.equal(synthetic.weights, weights)


@pytest.mark.parametrize("tensors, reason", [
    (dict(weights=torch.ones(5)), "one float per image"),
    (dict(weights=torch.tensor([1.0, 1.0, -0.5, 1.0, 1.0, 1.0])), "finite and non-negative"),
    (dict(weights=torch.tensor([1.0, float("inf"), 1.0, 1.0, 1.0, 1.0])), "finite and non-negative"),
    (dict(extra=torch.ones(6)), "optionally 'weights'"),
])
def test_a_malformed_file_is_refused_naming_it(tmp_path, tensors, reason):
    images, labels = _set()
    path = _write(tmp_path / "pool.safetensors", images=images, labels=labels, **tensors)
    with pytest.raises(ValueError, match=reason) as error:
        load_synthetic_set(path)
    assert str(path) in str(error.value)


def test_a_missing_set_is_a_clear_error(tmp_path):
    with pytest.raises(SetError, match="no synthetic set"):
        load_synthetic_set(tmp_path)


def test_soft_labels_round_trip_and_bad_ones_are_refused_naming_the_problem(tmp_path):
    from fedsynth.common.synthetic_set import SyntheticSet, content_hash, save_synthetic_set, soft_label_problem

    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    soft = torch.softmax(torch.randn(4, 3), 1)
    save_synthetic_set(tmp_path / "s", SyntheticSet(images, labels, None, soft_labels=soft), picture=False)
    kept = load_synthetic_set(tmp_path / "s")
    assert torch.equal(kept.soft_labels, soft)
    assert content_hash(images, labels, soft) != content_hash(images, labels, soft.flip(0))
    assert soft_label_problem(soft, labels, 3) is None
    assert "shape" in soft_label_problem(soft, labels, 4)
    assert "sum to 1" in soft_label_problem(soft * 2, labels, 3)
    assert "finite" in soft_label_problem(torch.full((4, 3), float("nan")), labels, 3)
    assert "non-negative" in soft_label_problem(soft - 0.5, labels, 3)
    assert "float32" in soft_label_problem(soft.double(), labels, 3)
    save_file({"images": images, "labels": labels, "soft_labels": soft * 3}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SetError, match="sum to 1"):
        load_synthetic_set(tmp_path / "bad.safetensors")


SOFT = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), 1)
SITES = torch.tensor([0, 0, 0, 1, 1, 1])
COUNTS = torch.tensor([[10.0, 0.0, 5.0], [3.0, 3.0, 3.0]], dtype=torch.float64)


def test_a_consensus_pool_file_keeps_each_images_site_and_the_sites_counts(tmp_path):
    images, labels = _set()
    kept = load_synthetic_set(_write(tmp_path / "pool.safetensors", images=images, labels=labels, soft_labels=SOFT,
                                     sites=SITES, class_counts=COUNTS))
    assert torch.equal(kept.sites, SITES) and torch.equal(kept.class_counts, COUNTS)
    assert kept.temperatures is None  # a consensus round's pool
    temperatures = torch.tensor([4.0, 2.0], dtype=torch.float64)
    voted = load_synthetic_set(_write(tmp_path / "vote.safetensors", images=images, labels=labels, soft_labels=SOFT,
                                      sites=SITES, class_counts=COUNTS, temperatures=temperatures))
    assert torch.equal(voted.temperatures, temperatures)
    # a pool file written before the rule was recorded is read as the rule its tensors imply
    assert (kept.aggregation, voted.aggregation) == ("consensus", "vote")
    assert load_synthetic_set(_write(tmp_path / "site.safetensors", images=images, labels=labels)).aggregation is None


def test_a_pool_file_records_the_rule_that_joined_its_sites_and_a_rule_its_tensors_cannot_refit_is_refused(tmp_path):
    images, labels = _set()
    joined = dict(images=images, labels=labels, soft_labels=SOFT, sites=SITES, class_counts=COUNTS)
    voted = dict(joined, temperatures=torch.tensor([4.0, 2.0], dtype=torch.float64))
    for name, tensors in (("gated", voted), ("vote", voted), ("consensus", joined)):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={POOL_AGGREGATION: name})
        assert load_synthetic_set(path).aggregation == name
    for name, tensors in (("gated", joined), ("consensus", voted), ("median", voted), ("x" * 5000, voted),
                          ("vote", dict(images=images, labels=labels))):
        path = tmp_path / "bad.safetensors"
        save_file(tensors, str(path), metadata={POOL_AGGREGATION: name})
        with pytest.raises(SetError, match="does not match the file's tensors") as refused:
            load_synthetic_set(path)
        assert len(str(refused.value)) < 400 and "\n" not in str(refused.value)


@pytest.mark.parametrize("tensors, reason", [
    (dict(sites=SITES), "come together"),
    (dict(sites=SITES, class_counts=COUNTS, soft_labels=None), "come together"),
    (dict(sites=SITES.int(), class_counts=COUNTS), "sites must be int64"),
    (dict(sites=SITES, class_counts=COUNTS.float()), "class_counts must be float64"),
    (dict(sites=SITES, class_counts=-COUNTS), "finite and non-negative"),
    (dict(sites=SITES + 1, class_counts=COUNTS), "must index"),
    (dict(sites=SITES * 0, class_counts=COUNTS), "must hold images"),
    (dict(temperatures=torch.ones(2, dtype=torch.float64)), "comes with 'sites'"),
    (dict(sites=SITES, class_counts=COUNTS, temperatures=torch.ones(3, dtype=torch.float64)), "one per site"),
    (dict(sites=SITES, class_counts=COUNTS, temperatures=torch.ones(2)), "temperatures must be float64"),
    *[(dict(sites=SITES, class_counts=COUNTS, temperatures=torch.tensor([4.0, bad], dtype=torch.float64)),
       "must lie in") for bad in (0.0, -1.0, float("nan"), float("inf"), 1e4)],
])
def test_a_malformed_consensus_pool_is_refused_naming_the_problem(tmp_path, tensors, reason):
    images, labels = _set()
    given = {"soft_labels": SOFT, **tensors}
    given = {k: v for k, v in given.items() if v is not None}
    path = _write(tmp_path / "pool.safetensors", images=images, labels=labels, **given)
    with pytest.raises(SetError, match=reason):
        load_synthetic_set(path)
