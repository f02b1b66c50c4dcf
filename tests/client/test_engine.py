"""The engine end to end on small real data, with real Opacus: sampling, accounting, data path, ledger."""

import json
import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedsynth.client.engine import DistillConfig, EngineError, _squared_norms, class_signal, distill, plan
from fedsynth.client.noisy_gradient import NoisyClassGradients
from fedsynth.common.data import DataError, ImageDataset
from fedsynth.common.ledger import BudgetExceededError, Ledger, LedgerCorruptError
from fedsynth.common.models import ModelNotPrivateError
from fedsynth.common.privacy.accounting import Mechanism, epsilon_of_history

TINY = dict(front_end="none",
            ipc=1, iterations=3, inner_steps=2, width=8, depth=2, batch_per_class=6.0, checkpoint_every=1)


def _run(dataset, tmp_path, name="out", ledger=None, secret_seed=0, **overrides):
    config = DistillConfig(**{**TINY, **overrides})
    ledger = ledger or Ledger.open(tmp_path / "ledger.jsonl", budget_epsilon=math.inf)
    return distill(dataset, config, ledger, tmp_path / name, device="cpu", secret_seed=secret_seed, progress=False)


def test_sampling_rate_is_the_accounted_one(tiny_mnist, tmp_path, monkeypatch):
    sizes = []
    original = NoisyClassGradients.__call__

    def spy(self, x, labels, classes):
        sizes.extend(int((labels == c).sum()) for c in classes)
        return original(self, x, labels, classes)

    monkeypatch.setattr(NoisyClassGradients, "__call__", spy)
    result = _run(tiny_mnist, tmp_path, iterations=20, inner_steps=1, ipc=1)
    q = result.synthetic.claim.sample_rate
    assert q == pytest.approx(6.0 * 10 / len(tiny_mnist))
    assert len(sizes) == 20 * 10  # one release per class per step
    n_per_class, draws = 30, len(sizes)
    mean = sum(sizes) / draws
    sd = math.sqrt(n_per_class * q * (1 - q) / draws)
    assert abs(mean - n_per_class * q) < 4 * sd  # Binomial(30, q) batches: Poisson sampling at rate q
    assert len(set(sizes)) > 3  # batch sizes vary: sampling is not fixed-size


def test_claimed_epsilon_is_opacus_epsilon_and_below_target(tiny_mnist, tmp_path):
    result = _run(tiny_mnist, tmp_path, epsilon=3.0, accountant="rdp")
    claim = result.synthetic.claim
    assert claim.releases == TINY["iterations"] * TINY["inner_steps"]
    acc = RDPAccountant()
    for _ in range(claim.releases):
        acc.step(noise_multiplier=claim.noise_multiplier, sample_rate=claim.sample_rate)
    assert claim.epsilon == pytest.approx(acc.get_epsilon(claim.delta), rel=1e-9)
    assert claim.epsilon <= 3.0
    assert claim.clip_norm == DistillConfig().clip_norm


def test_noise_multiplier_given_directly(tiny_mnist, tmp_path):
    result = _run(tiny_mnist, tmp_path, noise_multiplier=2.0)
    claim = result.synthetic.claim
    assert claim.noise_multiplier == 2.0
    mech = plan(tiny_mnist, DistillConfig(**{**TINY, "noise_multiplier": 2.0})).mechanism
    assert claim.epsilon == pytest.approx(epsilon_of_history([mech], 1e-5))


@pytest.mark.parametrize("post_processing", [{"image_steps": 3}, {"replay_epochs": 2}])
def test_post_processing_moves_the_set_without_releasing_or_spending_more(tiny_mnist, tmp_path, monkeypatch,
                                                                          post_processing):
    """Repeated image updates per release, or replay passes over the kept releases after the run."""
    releases = []
    original = NoisyClassGradients.__call__
    monkeypatch.setattr(NoisyClassGradients, "__call__",
                        lambda self, x, labels, classes: releases.extend(classes) or original(self, x, labels, classes))
    plain = _run(tiny_mnist, tmp_path, "plain", noise_multiplier=1.0)
    made = len(releases)
    more = _run(tiny_mnist, tmp_path, "more", noise_multiplier=1.0, **post_processing)
    assert len(releases) - made == made == TINY["iterations"] * TINY["inner_steps"] * 10
    assert more.synthetic.claim.releases == plain.synthetic.claim.releases
    assert more.synthetic.claim.epsilon == plain.synthetic.claim.epsilon
    assert not torch.equal(more.synthetic.images, plain.synthetic.images)  # the extra updates did move S
    assert not list((tmp_path / "more").glob(".fedsynth-checkpoint*"))  # kept releases went with the checkpoint


def test_replay_decays_the_image_learning_rate_to_its_end_fraction(tiny_mnist, tmp_path, monkeypatch):
    """The run's own updates keep lr_images; the replay passes go linearly from it to lr_end × it."""
    import fedsynth.client.engine as engine

    rates = []
    original = engine._match_step
    monkeypatch.setattr(engine, "_match_step",
                        lambda opt, *a: rates.append(opt.param_groups[0]["lr"]) or original(opt, *a))
    _run(tiny_mnist, tmp_path, noise_multiplier=1.0, lr_images=0.5, replay_epochs=2, replay_lr_end=0.1)
    releases = TINY["iterations"] * TINY["inner_steps"]
    assert rates[:releases] == [0.5] * releases
    replay = rates[releases:]
    assert len(replay) == 2 * releases
    assert replay[0] == pytest.approx(0.5) and replay[-1] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(replay, replay[1:]))


def test_released_images_are_8bit_pixels_bound_by_the_claim(tiny_mnist, tmp_path):
    from fedsynth.common.synthetic_set import content_hash, on_8bit_grid

    synthetic = _run(tiny_mnist, tmp_path, noise_multiplier=1.0).synthetic
    assert on_8bit_grid(synthetic.images) and len(torch.unique(synthetic.images)) > 2
    assert synthetic.claim.sha256 == content_hash(synthetic.images, synthetic.labels)


def _scrambled(dataset: ImageDataset, seed: int) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    return ImageDataset(torch.rand(dataset.images.shape, generator=gen), dataset.labels.clone(), dataset.classes, "x")


@pytest.mark.parametrize("post_processing", [{}, {"image_steps": 3}, {"replay_epochs": 2, "replay_lr_end": 0.1},
                                             {"release_layers": 1, "replay_epochs": 1, "match_per": "layer"}])
def test_real_data_reaches_the_set_only_through_the_noised_gradient(tiny_mnist, tmp_path, monkeypatch, post_processing):
    """Blind the one real-data path: the output must then not depend on the records at all."""
    other = _scrambled(tiny_mnist, 1)
    control_a = _run(tiny_mnist, tmp_path, "ca", noise_multiplier=1.0, **post_processing).synthetic.images
    control_b = _run(other, tmp_path, "cb", noise_multiplier=1.0, **post_processing).synthetic.images
    assert not torch.equal(control_a, control_b), "control: the records do shape the set"

    original = NoisyClassGradients.__call__
    monkeypatch.setattr(NoisyClassGradients, "__call__",
                        lambda self, x, labels, classes: original(self, torch.zeros_like(x), labels, classes))
    blind_a = _run(tiny_mnist, tmp_path, "ba", noise_multiplier=1.0, **post_processing).synthetic
    blind_b = _run(other, tmp_path, "bb", noise_multiplier=1.0, **post_processing).synthetic
    assert torch.equal(blind_a.images, blind_b.images)
    assert blind_a.claim.class_signal == blind_b.claim.class_signal  # the claim's statistic too


def test_budget_stop_refuses_before_anything_is_written(tiny_mnist, tmp_path):
    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=3.2)
    _run(tiny_mnist, tmp_path, "first", ledger=ledger, epsilon=3.0)
    before = ledger.path.read_bytes()
    with pytest.raises(BudgetExceededError):
        _run(tiny_mnist, tmp_path, "second", ledger=ledger, epsilon=3.0)
    assert ledger.path.read_bytes() == before
    assert not (tmp_path / "second" / "synthetic.safetensors").exists()
    assert ledger.spent_epsilon() <= 3.2


class Crash(Exception):
    pass


@pytest.mark.parametrize("replay_epochs", [0, 2])
def test_crash_and_resume_keep_the_spend_and_reproduce_the_run(tiny_mnist, tmp_path, replay_epochs):
    """With replay, the releases made before the crash come back from the checkpoint, so the set is the same."""
    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    config = DistillConfig(**{**TINY, "epsilon": 5.0, "replay_epochs": replay_epochs})

    def crash_at_2(done):
        if done == 2:
            raise Crash

    with pytest.raises(Crash):
        distill(tiny_mnist, config, ledger, tmp_path / "run", device="cpu", secret_seed=7, progress=False,
                on_iteration=crash_at_2)
    spends = [e for e in ledger.entries() if e["kind"] == "spend"]
    assert len(spends) == 1 and not ledger.released(spends[0]["run_id"])
    spent = ledger.spent_epsilon()

    resumed = distill(tiny_mnist, config, Ledger.open(ledger.path), tmp_path / "run", device="cpu", progress=False)
    assert resumed.resumed_from == 2
    assert resumed.run_id == spends[0]["run_id"]
    assert ledger.spent_epsilon() == spent  # resuming spent nothing more
    assert [e["kind"] for e in ledger.entries()] == ["open", "spend", "release"]

    straight = distill(tiny_mnist, config, ledger, tmp_path / "straight", device="cpu", secret_seed=7, progress=False)
    assert torch.allclose(resumed.synthetic.images, straight.synthetic.images, atol=1e-6)
    # the releases before the crash still count in the class signal
    assert resumed.synthetic.claim.class_signal == pytest.approx(straight.synthetic.claim.class_signal, rel=1e-6)


def test_resume_with_other_settings_is_refused(tiny_mnist, tmp_path):
    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    with pytest.raises(Crash):
        distill(tiny_mnist, DistillConfig(**TINY), ledger, tmp_path / "run", device="cpu", progress=False,
                on_iteration=lambda done: (_ for _ in ()).throw(Crash()))
    with pytest.raises(EngineError, match="different configuration"):
        distill(tiny_mnist, DistillConfig(**{**TINY, "ipc": 2}), ledger, tmp_path / "run", device="cpu", progress=False)


def test_corrupt_ledger_stops_the_engine(tiny_mnist, tmp_path):
    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    with open(ledger.path, "a") as handle:
        handle.write('{"seq": 1, "kind": "spend"}\n')
    with pytest.raises(LedgerCorruptError):
        _run(tiny_mnist, tmp_path, ledger=ledger)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (dict(ipc=31), DataError, "larger than the number of records"),
        (dict(epsilon=0.0), EngineError, "epsilon"),
        (dict(epsilon=-1.0), EngineError, "epsilon"),
        (dict(delta=0.01), ValueError, "below 1/n"),
        (dict(delta=1.5), EngineError, "delta"),
        (dict(norm="batchnorm"), ModelNotPrivateError, "BatchNorm"),
        (dict(replay_epochs=2, replay_lr_end=0.0), EngineError, "replay_lr_end"),
        (dict(replay_epochs=-1), EngineError, "replay_epochs"),
        (dict(release_layers=-1), EngineError, "release_layers"),
        (dict(match_per="pixel"), EngineError, "match_per"),
        (dict(release_layers=4), EngineError, "only 3 weight layers"),
        (dict(clip_norm=math.nan), EngineError, "clip_norm"),
        (dict(clip_norm=math.inf), EngineError, "clip_norm"),
        (dict(lr_images=math.nan), EngineError, "lr_images"),
        (dict(sample_rate=0.0), EngineError, "sample_rate"),
        (dict(sample_rate=math.nan), EngineError, "sample_rate"),
        (dict(sample_rate=2.0), EngineError, "sample_rate"),
        (dict(batch_per_class=-5.0), EngineError, "batch_per_class"),
        (dict(epsilon=math.nan), EngineError, "epsilon"),
        (dict(iterations=10**7), EngineError, "iterations"),
        (dict(iterations=50_000, inner_steps=100), EngineError, "no run of that length finishes"),
        (dict(ipc=True), EngineError, "ipc must be a number"),
        (dict(depth=9), EngineError, "cannot run on 1×28×28 images"),
    ],
)
def test_bad_input_is_refused_before_budget_is_spent(tiny_mnist, tmp_path, overrides, error, match):
    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    before = ledger.path.read_bytes()
    with pytest.raises(error, match=match):
        _run(tiny_mnist, tmp_path, ledger=ledger, **overrides)
    assert ledger.path.read_bytes() == before


def test_class_with_no_records_is_refused(tiny_mnist, tmp_path):
    keep = torch.nonzero(tiny_mnist.labels != 4).flatten()
    with pytest.raises(DataError, match="no records: 4"):
        _run(tiny_mnist.subset(keep), tmp_path)


def test_no_noise_run_is_unbounded_and_needs_an_unbounded_budget(tiny_mnist, tmp_path):
    result = _run(tiny_mnist, tmp_path, epsilon=math.inf)
    claim = result.synthetic.claim
    assert math.isinf(claim.epsilon) and claim.noise_multiplier == 0.0
    assert json.loads(claim.to_json())["epsilon"] is None  # strict JSON, as it is signed and sent (∞ is null)
    with pytest.raises(BudgetExceededError):
        _run(tiny_mnist, tmp_path, "b", ledger=Ledger.open(tmp_path / "finite.jsonl", budget_epsilon=10),
             epsilon=math.inf)


def test_federated_site_distils_sparse_and_missing_classes_from_noise(tiny_mnist, tmp_path):
    keep = torch.cat([torch.nonzero(tiny_mnist.labels == c).flatten()[: (0 if c == 4 else 1 if c == 5 else 30)]
                      for c in range(10)])
    sparse = tiny_mnist.subset(keep)
    result = _run(sparse, tmp_path, ipc=2, every_class_populated=False, epsilon=5.0)
    assert result.synthetic.labels.tolist() == [c for c in range(10) for _ in range(2)]  # nothing revealed by omission
    assert torch.isfinite(result.synthetic.images).all()


@pytest.mark.parametrize("release_layers", [0, 1])
def test_class_signal_is_the_norm_of_each_class_clipped_sum_without_noise(tiny_mnist, tmp_path, monkeypatch,
                                                                          release_layers):
    keep = torch.cat([torch.nonzero(tiny_mnist.labels == c).flatten()[: (0 if c == 4 else 1 if c == 5 else 30)]
                      for c in range(10)])
    squares = {c: [] for c in range(10)}
    original = NoisyClassGradients.__call__

    def spy(self, x, labels, classes):
        sums = original(self, x, labels, classes)
        for j, c in enumerate(classes):
            squares[c].append(sum(float(s[j].pow(2).sum()) for s in sums))
            dimensions.add(sum(s[j].numel() for s in sums))
        return sums

    dimensions = set()
    monkeypatch.setattr(NoisyClassGradients, "__call__", spy)
    claim = _run(tiny_mnist.subset(keep), tmp_path, every_class_populated=False, noise_multiplier=0.0,
                 release_layers=release_layers).synthetic.claim
    signal = claim.class_signal
    assert [claim.release_dimension] == list(dimensions)  # the numbers in each release, d of σ·√d
    assert signal == pytest.approx([math.sqrt(sum(v) / len(v)) for v in squares.values()], rel=1e-4, abs=1e-6)
    assert signal[4] == 0.0 and signal[5] <= 1.0 + 1e-6  # no records; one record clipped to C = 1
    assert min(s for c, s in enumerate(signal) if c not in (4, 5)) > 1.0  # several records per release


def test_class_signal_removes_the_noise_energy():
    """σ²C²d is subtracted: pure noise reads as about 0, a signal of norm 8 as 8 (not inflated by the noise)."""
    gen = torch.Generator().manual_seed(0)
    d, releases, sigma, clip = 2000, 1000, 1.0, 1.0
    signal = torch.zeros(2, d)
    signal[0, :64] = 1.0  # norm 8
    sq = torch.zeros(2, dtype=torch.float64)
    for _ in range(releases):
        noised = signal + sigma * clip * torch.randn(2, d, generator=gen)
        sq += _squared_norms([noised[:, : d // 2], noised[:, d // 2:]])
    estimate = class_signal(sq, releases, Mechanism(sigma, 0.1, releases, clip), d)
    assert estimate[0] == pytest.approx(8.0, rel=0.1)
    assert estimate[1] < 3.0  # noise of norm √2000 ≈ 45 per release would read ~45 unsubtracted
    assert class_signal(sq, 0, Mechanism(sigma, 0.1, releases, clip), d) is None


@pytest.mark.parametrize("seed", [2**62, -5])
def test_any_integer_seed_runs(tiny_mnist, tmp_path, seed):
    """A large or negative public seed must not crash the run after its budget was recorded."""
    result = _run(tiny_mnist, tmp_path, noise_multiplier=1.0, seed=seed)
    assert result.synthetic.claim.seed == seed


def test_classes_sharing_one_pass_distil_the_same_set(tiny_mnist, tmp_path):
    """Batching the classes' releases (the CUDA default) changes the speed, not the result."""
    apart = _run(tiny_mnist, tmp_path, "apart", epsilon=math.inf, classes_per_pass=1).synthetic.images
    together = _run(tiny_mnist, tmp_path, "together", epsilon=math.inf, classes_per_pass=10).synthetic.images
    assert (apart - together).abs().max() <= 2 / 255  # float summation order only: at most a pixel level or two
    assert (apart != together).float().mean() < 0.01


@pytest.mark.parametrize("layers,expected", [(0, None), (1, ["classifier.weight"]),
                                             (2, ["features.4.weight", "classifier.weight"])])
def test_partial_release_carries_the_last_weight_layers_only(layers, expected):
    from fedsynth.client.engine import released_names
    from fedsynth.common.models import ConvNet

    net = ConvNet(1, 10, 28, width=8, depth=2)
    names = released_names(net, layers)
    assert names == (expected or [n for n, _ in net.named_parameters()])


def test_an_output_folder_in_use_by_another_run_is_refused_before_any_spend(tiny_mnist, tmp_path):
    from fedsynth.client.run_folder import RunFolder

    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    before = ledger.path.read_bytes()
    with RunFolder(tmp_path / "out"):
        with pytest.raises(EngineError, match="in use by another fedsynth run"):
            _run(tiny_mnist, tmp_path, ledger=ledger)
    assert ledger.path.read_bytes() == before


def test_an_unwritable_output_or_a_missing_device_is_refused_before_any_spend(tiny_mnist, tmp_path):
    from fedsynth.common.runtime import DeviceError

    ledger = Ledger.open(tmp_path / "site.jsonl", budget_epsilon=math.inf)
    before = ledger.path.read_bytes()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(EngineError, match="cannot create or write"):
        distill(tiny_mnist, DistillConfig(**TINY), ledger, tmp_path / "file" / "out", device="cpu", progress=False)
    with pytest.raises(EngineError, match="cannot run"):
        distill(tiny_mnist, DistillConfig(**TINY), ledger, tmp_path / "o", device="cuda:7", progress=False)
    with pytest.raises(DeviceError, match="not a torch device"):
        distill(tiny_mnist, DistillConfig(**TINY), ledger, tmp_path / "o", device="gpu please", progress=False)
    assert ledger.path.read_bytes() == before and not (tmp_path / "o").exists()


def test_a_second_release_of_a_run_is_refused(tiny_mnist, tmp_path):
    from fedsynth.common.ledger import LedgerError

    result = _run(tiny_mnist, tmp_path, noise_multiplier=1.0)
    ledger = Ledger.open(tmp_path / "ledger.jsonl")
    with pytest.raises(LedgerError, match="already released"):
        ledger.record_release(result.run_id, result.synthetic.claim.sha256)


def test_class_names_that_look_like_tex_still_give_a_picture_and_never_fail_a_released_run(tiny_mnist, tmp_path):
    names = ["$\\nosuchcmd$"] + list(tiny_mnist.classes[1:])
    data = ImageDataset(tiny_mnist.images, tiny_mnist.labels, names, "tex-names")
    result = _run(data, tmp_path, noise_multiplier=1.0)
    assert (result.out_dir / "synthetic.png").exists() and result.synthetic.claim.classes[0] == names[0]
