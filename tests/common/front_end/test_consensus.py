"""Pairwise consensus: each site is trusted on the class pairs it held, in proportion to its counts."""

import torch

from fedsynth.common.front_end.consensus import consensus, pair_laplacian


def _differences(m: torch.Tensor) -> torch.Tensor:
    return m[:, None, :] - m[None, :, :]


def _sites():
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    # site A never saw class 2, site B never saw class 0: their rows for those classes are junk,
    # and each site's map has its own shift shared by all classes (softmax ignores it)
    a = truth.clone() + 0.7
    a[2] = 50 * torch.randn(5, generator=gen, dtype=torch.float64)
    b = truth.clone() - 1.3
    b[0] = -40 * torch.randn(5, generator=gen, dtype=torch.float64)
    counts = [torch.tensor([400.0, 300.0, 0.0]), torch.tensor([0.0, 200.0, 500.0])]
    return truth, [a, b], counts


def test_class_pairs_no_site_held_together_are_chained_through_the_pairs_they_did():
    truth, heads, counts = _sites()
    joint = consensus(heads, counts)
    # 0 vs 2 was never seen together: it follows from 0 vs 1 (site A) and 1 vs 2 (site B)
    assert torch.allclose(_differences(joint), _differences(truth), atol=0.05)
    plain = (heads[0] + heads[1]) / 2
    assert not torch.allclose(_differences(plain), _differences(truth), atol=1.0)  # what averaging gives


def test_a_site_with_no_records_counted_changes_nothing_and_noisy_negative_counts_count_as_zero():
    truth, heads, counts = _sites()
    junk = 1e3 * torch.randn(3, 5, dtype=torch.float64)
    alone = consensus(heads, counts)
    assert torch.allclose(consensus(heads + [junk], counts + [torch.tensor([-3.0, 0.0, -0.5])]), alone, atol=1e-6)


def test_the_laplacian_weighs_a_pair_by_both_counts():
    lap = pair_laplacian(torch.tensor([10.0, 10.0, 0.0]))
    assert torch.allclose(lap.sum(1), torch.zeros(3, dtype=torch.float64))  # a shift of all classes is free
    assert lap[0, 1] == -5.0 and lap[0, 2] == 0.0 and lap[1, 2] == 0.0  # 10·10 / 20; nothing with a class never held
