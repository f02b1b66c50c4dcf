"""The gradient-matching distance: per output unit (DC's) and per layer, against direct cosine computations."""

import pytest
import torch
import torch.nn.functional as F

from fedsynth.client.matching import layer_distance, matching_distance


def test_per_unit_sums_one_cosine_distance_per_output_row():
    real, syn = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    expected = sum(1 - F.cosine_similarity(real[i].flatten(), syn[i].flatten(), dim=0) for i in range(4))
    assert layer_distance(real, syn) == pytest.approx(float(expected), rel=1e-5)


def test_per_layer_is_one_cosine_distance_of_the_whole_tensor():
    real, syn = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    expected = 1 - F.cosine_similarity(real.flatten(), syn.flatten(), dim=0)
    assert layer_distance(real, syn, per="layer") == pytest.approx(float(expected), rel=1e-5)


def test_per_layer_weighs_rows_by_size():
    """A quiet row that disagrees costs a per-unit distance a whole unit, a per-layer one almost nothing."""
    real = torch.tensor([[10.0, 0.0], [0.0, 0.1]])
    syn = torch.tensor([[10.0, 0.0], [0.0, -0.1]])
    assert layer_distance(real, syn) == pytest.approx(2.0, abs=1e-3)
    assert layer_distance(real, syn, per="layer") == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("per", ["unit", "layer"])
def test_batch_dims_keep_classes_apart_and_one_dimensional_tensors_are_skipped(per):
    real, syn = torch.randn(5, 4, 6), torch.randn(5, 4, 6)
    together = matching_distance([real, torch.randn(5, 4)], [syn, torch.randn(5, 4)], batch_dims=1, per=per)
    alone = torch.stack([layer_distance(real[c], syn[c], per=per) for c in range(5)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_unknown_unit_is_refused():
    with pytest.raises(ValueError, match="matching unit"):
        layer_distance(torch.randn(2, 2), torch.randn(2, 2), per="pixel")
