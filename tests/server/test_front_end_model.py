"""The server's head for a front-end round: consensus of the sites' heads when all sent counts, capped counts."""

import dataclasses

import torch
from helpers import make_claim

from fedsynth.common.payload import Upload
from fedsynth.server.front_end_model import capped_counts, fit_front_end_model


def _upload(images, labels, soft, counts, q=0.5):
    claim = make_claim(images, labels, q=q, front_end="scatter", soft_labels=True, class_counts=counts,
                       image_shape=(1, 28, 28))
    return Upload("s", images, labels, claim, b"", ("r", "n"), soft)


def _set(seed):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(20, 1, 28, 28, generator=gen)  # pixels in [0, 1], as decoded
    labels = torch.arange(10).repeat(2)
    soft = torch.softmax(torch.randn(20, 10, generator=gen), 1)
    return images, labels, soft


def test_a_site_claiming_more_records_than_its_sample_rate_allows_is_scaled_down_to_it():
    images, labels, soft = _set(0)
    honest = _upload(images, labels, soft, (100.0,) * 10)
    inflated = _upload(images, labels, soft, (1e9,) * 10)
    assert torch.equal(capped_counts(honest, head_batch=4096.0), torch.full((10,), 100.0, dtype=torch.float64))
    assert float(capped_counts(inflated, head_batch=4096.0).sum()) == 4096.0 / 0.5
    negative = _upload(images, labels, soft, (-5.0,) + (10.0,) * 9)
    assert float(capped_counts(negative, head_batch=4096.0).min()) == 0.0


def test_consensus_needs_every_site_counted_else_the_union_is_fitted():
    a, b = _upload(*_set(1), (50.0,) * 10), _upload(*_set(2), (70.0,) * 10)
    fit = dict(num_classes=10, image_shape=(1, 28, 28), head_batch=4096.0)
    model, combined_by = fit_front_end_model("scatter", [a, b], **fit)
    assert combined_by is not None and model.head.weight.shape == (10, 81 * 7 * 7)
    sites, counts = combined_by
    assert sites.tolist() == [0] * 20 + [1] * 20 and counts.tolist() == [[50.0] * 10, [70.0] * 10]
    uncounted = dataclasses.replace(b, claim=dataclasses.replace(b.claim, class_counts=None))
    assert fit_front_end_model("scatter", [a, uncounted], **fit)[1] is None  # the union fit
    assert fit_front_end_model("scatter", [a, b], **fit, union=True)[1] is None
