"""The server's model for a front-end round: the sites' heads voted (gated or not) or joined by consensus when all
sent counts, else the union fit; each site's head fitted once for every rule; capped counts."""

import dataclasses

import pytest
import torch
from helpers import make_claim

from fedsynth.common.payload import Upload
from fedsynth.server.front_end_model import AGGREGATIONS, capped_counts, fit_front_end_models


def _upload(images, labels, soft, counts, q=0.5, temperature=4.0):
    claim = make_claim(images, labels, q=q, front_end="scatter", soft_labels=True, class_counts=counts,
                       image_shape=(1, 28, 28), config={"temperature": temperature})
    return Upload("s", images, labels, claim, b"", ("r", "n"), soft)


def fit_front_end_model(front_end, uploads, aggregation=AGGREGATIONS[0], **fit):
    """The round's own model, the rule that made it and what its pool file keeps."""
    models, joined = fit_front_end_models(front_end, uploads, **fit, aggregations=[aggregation])
    (combined, model), = models.items()
    return model, combined, joined


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


def test_the_sites_heads_are_joined_only_when_every_site_was_counted_else_the_union_is_fitted():
    a, b = _upload(*_set(1), (50.0,) * 10), _upload(*_set(2), (70.0,) * 10)
    fit = dict(num_classes=10, image_shape=(1, 28, 28), head_batch=4096.0)
    model, combined, joined = fit_front_end_model("scatter", [a, b], **fit)
    assert combined == "gated" and model.heads.weight.shape == (2 * 10, 81 * 7 * 7) and model.gate_iterations > 0
    assert fit_front_end_model("scatter", [a, b], **fit, aggregation="vote")[0].gate_iterations == 0
    assert joined["sites"].tolist() == [0] * 20 + [1] * 20
    assert joined["class_counts"].tolist() == [[50.0] * 10, [70.0] * 10]
    assert joined["temperatures"].tolist() == [4.0, 4.0]
    model, combined, joined = fit_front_end_model("scatter", [a, b], **fit, aggregation="consensus")
    assert combined == "consensus" and model.head.weight.shape == (10, 81 * 7 * 7)
    assert "temperatures" not in joined  # what a consensus pool file keeps: sites and counts
    uncounted = dataclasses.replace(b, claim=dataclasses.replace(b.claim, class_counts=None))
    assert fit_front_end_model("scatter", [a, uncounted], **fit)[1:] == ("union", {})
    assert fit_front_end_model("scatter", [a, b], **fit, aggregation="union")[1:] == ("union", {})
    with pytest.raises(ValueError, match="unknown aggregation"):
        fit_front_end_model("scatter", [a, b], **fit, aggregation="median")


def test_the_vote_multiplies_each_sites_own_temperature_back_into_its_head():
    fit = dict(num_classes=10, image_shape=(1, 28, 28), head_batch=4096.0)
    cool, hot = _upload(*_set(1), (50.0,) * 10, temperature=1.0), _upload(*_set(2), (50.0,) * 10, temperature=4.0)
    alone = [fit_front_end_model("scatter", [u], **fit)[0].heads for u in (cool, hot)]
    hot_at_one = dataclasses.replace(hot, claim=dataclasses.replace(hot.claim, config={"temperature": 1.0}))
    assert torch.allclose(alone[1].weight, 4.0 * fit_front_end_model("scatter", [hot_at_one], **fit)[0].heads.weight)
    both, _, joined = fit_front_end_model("scatter", [cool, hot], **fit)
    assert joined["temperatures"].tolist() == [1.0, 4.0]
    assert torch.allclose(both.heads.weight, torch.cat([alone[0].weight, alone[1].weight]))
    images = _set(1)[0]
    # one site: the vote is that site's own softmax, at its own temperature
    model = fit_front_end_model("scatter", [hot], **fit)[0]
    assert torch.allclose(model(images * 2 - 1).exp(), torch.softmax(model.heads(model.front_end(images)), 1),
                          atol=1e-5)


def test_every_rule_is_made_from_one_fit_of_each_sites_head_and_the_first_is_what_the_pool_keeps(monkeypatch):
    import fedsynth.server.front_end_model as front_end_model

    fits = []
    real = front_end_model.fit_site_maps
    monkeypatch.setattr(front_end_model, "fit_site_maps", lambda *a, **k: fits.append(1) or real(*a, **k))
    a, b = _upload(*_set(1), (50.0,) + (5.0,) * 9), _upload(*_set(2), (5.0,) * 9 + (50.0,))
    fit = dict(num_classes=10, image_shape=(1, 28, 28), head_batch=4096.0)
    models, joined = fit_front_end_models("scatter", [a, b], **fit, aggregations=["consensus", "gated", "vote"])
    assert list(models) == ["consensus", "gated", "vote"] and len(fits) == 1
    assert "temperatures" not in joined and joined["class_counts"].shape == (2, 10)
    images = _set(3)[0] * 2 - 1
    assert torch.allclose(models["gated"].heads.weight, models["vote"].heads.weight)
    assert not torch.allclose(models["gated"](images), models["vote"](images))  # the gate moves the scores
