"""The class-wise vote: each class scored by the sites that held it, in proportion to their counts."""

import torch

from fedsynth.common.front_end import build_front_end
from fedsynth.common.front_end.join import fit_joined
from fedsynth.common.front_end.vote import (GATE_ITERATIONS, SITE_LOGIT_SCALE, FrontEndVote, vote_scores,
                                            vote_weights)


def test_each_class_is_shared_by_the_sites_counts_of_it_and_negative_noisy_counts_count_as_zero():
    counts = torch.tensor([[30.0, 0.0, -2.0, 0.0], [10.0, 5.0, 4.0, 0.0]])
    w = vote_weights(counts)
    assert torch.allclose(w.sum(0), torch.ones(4, dtype=torch.float64))
    assert w[:, 0].tolist() == [0.75, 0.25] and w[:, 1].tolist() == [0.0, 1.0] and w[:, 2].tolist() == [0.0, 1.0]
    assert w[:, 3].tolist() == [0.5, 0.5]  # no site counted class 3: shared equally


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def _vote(logits_a, logits_b, counts):
    """A two-site vote on 'features' = the pixel-space input, site heads given by their logit maps."""
    heads = torch.nn.Linear(2, 2 * 3)
    with torch.no_grad():
        heads.weight.copy_(torch.cat([logits_a, logits_b]))
        heads.bias.zero_()
    return FrontEndVote(_Identity(), heads, vote_weights(counts))


def test_the_score_of_a_class_is_the_count_weighted_probability_the_sites_that_held_it_give_it():
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-5.0, -5.0]])  # site A never held class 2
    b = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.5, 2.0]])
    counts = torch.tensor([[100.0, 100.0, 0.0], [50.0, 10.0, 200.0]])
    vote = _vote(a, b, counts)
    features = torch.tensor([[0.3, -0.7], [1.5, 0.2]])
    out = vote(features * 2 - 1)  # the model takes [-1, 1] inputs, the front end sees [0, 1]
    pa, pb = torch.softmax(features @ a.T, 1), torch.softmax(features @ b.T, 1)
    w = counts / counts.sum(0)
    expected = w[0] * pa + w[1] * pb
    assert torch.allclose(out.exp(), expected / expected.sum(1, keepdim=True), atol=1e-6)
    assert torch.allclose(out.logsumexp(1), torch.zeros(2), atol=1e-6)  # log-probabilities
    # class 2's score is site B's alone: what A's head says of class 2 does not enter it directly
    assert torch.allclose(expected[:, 2], pb[:, 2])


def test_fitted_from_one_sites_set_the_vote_is_that_sites_head_at_the_soft_labels_temperature_tempered():
    gen = torch.Generator().manual_seed(0)
    front_end = build_front_end("scatter", (1, 28, 28))
    images = torch.rand(20, 1, 28, 28, generator=gen)
    labels = torch.arange(10).repeat(2)
    logits = 3 * torch.randn(20, 10, generator=gen)
    soft = torch.softmax(logits / 4.0, 1)
    sites = torch.zeros(20, dtype=torch.long)
    vote = fit_joined(front_end, images, labels, soft, sites, torch.full((1, 10), 2.0), 10, "vote",
                      torch.tensor([4.0], dtype=torch.float64))
    # 20 images, 3970 features: the ridge fit reproduces the logits on its own images (up to a shift per image)
    got = vote(images * 2 - 1)
    want = torch.log_softmax(logits * SITE_LOGIT_SCALE, 1)
    assert torch.allclose(got, want, atol=0.05)
    assert not torch.allclose(got, torch.log_softmax(logits, 1), atol=0.05)  # the tempering is applied


def _label_shift_federation(seed: int = 0, sites: int = 4, classes: int = 5, inputs: int = 200):
    """Sites that differ only in their label mix: p_s(y | x) ∝ n_sy p(x | y) exactly, and the pooled posterior
    p(y | x) ∝ n_y p(x | y) of all their records."""
    gen = torch.Generator().manual_seed(seed)
    likelihood = torch.rand(inputs, classes, generator=gen, dtype=torch.float64) ** 3  # p(x | y), sharp
    counts = torch.rand(sites, classes, generator=gen, dtype=torch.float64) ** 4 * 1000  # strongly skewed
    per_site = likelihood[:, None, :] * counts[None]  # [N, S, K]
    posteriors = per_site / per_site.sum(2, keepdim=True)
    pooled = likelihood * counts.sum(0)
    return posteriors, counts, pooled / pooled.sum(1, keepdim=True)


def test_the_gated_vote_recovers_the_pooled_posterior_when_sites_differ_only_in_their_label_mix():
    posteriors, counts, pooled = _label_shift_federation()
    gated = vote_scores(posteriors, vote_weights(counts), gate_iterations=200)
    assert torch.allclose(gated / gated.sum(1, keepdim=True), pooled, atol=1e-4)
    plain = vote_scores(posteriors, vote_weights(counts))  # the class-wise vote is not exact there
    assert (plain / plain.sum(1, keepdim=True) - pooled).abs().max() > 0.05
    # the round's few iterations already choose the pooled posterior's class on nearly every input
    few = vote_scores(posteriors, vote_weights(counts), GATE_ITERATIONS)
    assert float((few.argmax(1) == pooled.argmax(1)).double().mean()) > 0.98


def test_a_gated_vote_with_zero_iterations_is_the_class_wise_vote_and_a_gate_never_leaves_the_simplex():
    posteriors, counts, _ = _label_shift_federation(seed=1)
    weights = vote_weights(counts)
    assert torch.equal(vote_scores(posteriors, weights), (posteriors * weights).sum(1))
    gated = vote_scores(posteriors, weights, 3)
    assert bool((gated >= 0).all()) and torch.allclose(gated.sum(1), torch.ones(len(gated), dtype=gated.dtype))
    # a model with the gate returns log-probabilities as the plain vote does
    vote = _vote(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([[9.0, 1.0, 0.0], [1.0, 9.0, 5.0]]))
    vote.gate_iterations = GATE_ITERATIONS
    assert torch.allclose(vote(torch.rand(4, 2)).logsumexp(1), torch.zeros(4), atol=1e-6)
