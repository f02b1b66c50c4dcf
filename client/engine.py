"""The private distillation engine: PSG-family DP gradient matching at one site.

    S ← noise
    for t in 1..T:  θ ← fresh draw
        for k in 1..K:
            for each class c:  B_c ← Poisson(D_c, q);  ĝ_c ← Σ clip(∇θ ℓ(B_c)) + N(0, σ²C²)   (only real-data path)
                               repeat M times:  S ← S − η ∇_S Σ_c dist(ĝ_c, ∇θ ℓ(f_θ(aug(S_c))))
                                                (same augmentation as the real batch)
            θ ← θ − η_θ ∇θ ℓ(f_θ(S))   (S only: free)

T·K Poisson-subsampled Gaussian releases compose (classes are disjoint within a step);
the M image updates per release only post-process what was released.
The whole mechanism is written to the site's ledger before the first real record is
read, and the release entry before the set is written out. A crash leaves a checkpoint
in the output folder; running the same command again resumes it without spending again.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from fedsynth.client.class_counts import COUNT_RELEASES, noisy_class_counts
from fedsynth.client.feature_mean import noisy_feature_mean
from fedsynth.client.feature_synthesis import soft_labels, synthesise
from fedsynth.client.head_training import linear_head, train_head
from fedsynth.client.matching import matching_distance
from fedsynth.client.class_release import PoissonClassRelease, class_groups
from fedsynth.client.config import DistillConfig, check_settings
from fedsynth.client.errors import EngineError
from fedsynth.client.release_store import ReleaseStore
from fedsynth.client.random_streams import generator
from fedsynth.client.run_folder import RunFolder
from fedsynth.common.augment import Augmenter, AugmentParams, per_example
from fedsynth.common.data import DataError, ImageDataset, to_model_space, to_pixel_space
from fedsynth.common.claim import MAX_RELEASES, Claim, ClaimError
from fedsynth.common.errors import one_line
from fedsynth.common.front_end import build_front_end
from fedsynth.common.ledger import Ledger, LedgerError
from fedsynth.common.models import ConvNet, ModelNotPrivateError, check_private
from fedsynth.common.privacy.accounting import (
    Mechanism,
    calibrate_noise_multiplier,
    check_delta,
    epsilon_of_history,
)
from fedsynth.common.runtime import resolve_device
from fedsynth.common.synthetic_set import SyntheticSet, content_hash, json_safe, quantise, save_synthetic_set
from fedsynth.common.versions import library_versions

__all__ = ["DistillConfig", "DistillResult", "EngineError", "Plan", "check_settings", "distill", "plan", "validate"]
SPENT_EVERY = 10  # iterations between refreshes of the progress bar's ε (PRV takes a tenth of a second)


@dataclass
class Plan:
    """The mechanism a run will spend, fixed before any real record is read."""

    mechanism: Mechanism
    epsilon: float
    delta: float
    accountant: str


@dataclass
class DistillResult:
    synthetic: SyntheticSet
    out_dir: Path
    run_id: str
    resumed_from: int = 0
    seconds: float = 0.0


def validate(dataset: ImageDataset, config: DistillConfig) -> None:
    """Every refusal that can be decided from the data and settings alone, before budget is spent."""
    check_settings(config)
    if dataset.num_classes < 2:
        raise DataError(f"{dataset.name}: needs at least two classes, found {dataset.num_classes}")
    if config.every_class_populated:
        counts = dataset.class_counts()
        empty = [dataset.classes[c] for c, n in enumerate(counts) if n == 0]
        if empty:
            raise DataError(f"{dataset.name}: class(es) with no records: {', '.join(empty)}")
        small = [f"{dataset.classes[c]} ({n})" for c, n in enumerate(counts) if n < config.ipc]
        if small:
            raise DataError(f"ipc={config.ipc} is larger than the number of records of class(es): {', '.join(small)}")
    check_delta(config.delta, len(dataset))


def probe(dataset: ImageDataset, config: DistillConfig, device: torch.device) -> None:
    """Build the network for the data's image size and run one tiny forward/backward on `device`:
    a network that does not fit the images, or a device that does not work, fails here, before any spend."""
    channels, height, width = dataset.image_shape
    if config.front_end != "none":
        return _probe_front_end(dataset, config, device)
    try:
        network = _network(dataset, config)
        check_private(network)
        released_names(network, config.release_layers)
        network = network.to(device)
        x = torch.zeros(1, channels, height, width, device=device)  # one record: a Poisson batch may hold one
        F.cross_entropy(network(x), torch.zeros(1, dtype=torch.long, device=device)).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except (RuntimeError, ValueError, AssertionError, TypeError) as err:
        if isinstance(err, (DataError, EngineError, ModelNotPrivateError)):
            raise
        raise EngineError(f"the network (width {config.width}, depth {config.depth}) cannot run on "
                          f"{channels}×{height}×{width} images on {device}: {one_line(err, 200)}") from None


def _probe_front_end(dataset: ImageDataset, config: DistillConfig, device: torch.device) -> None:
    """The front end and head on one record, forward and backward into the pixels, on `device`."""
    try:
        front_end = build_front_end(config.front_end, dataset.image_shape).to(device)
        head = linear_head(front_end.feature_dim, dataset.num_classes).to(device)
        x = torch.zeros(1, *dataset.image_shape, device=device, requires_grad=True)
        F.cross_entropy(head(front_end(x)), torch.zeros(1, dtype=torch.long, device=device)).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except (RuntimeError, ValueError, AssertionError, TypeError) as err:
        shape = "×".join(map(str, dataset.image_shape))
        raise EngineError(f"the {config.front_end} front end cannot run on {shape} images on {device}: "
                          f"{one_line(err, 200)}") from None


def plan(dataset: ImageDataset, config: DistillConfig) -> Plan:
    """Sample rate, σ and ε of the run. The record count n enters only through q (public by design, as in DP-SGD).

    Pixels: T·K releases at q = batch-per-class · classes / n. A front end: one DP-SGD run of the head,
    epochs / q steps at q = head-batch / n, and more releases of that mechanism before it: the class histogram
    and the `mean-releases` of the mean feature."""
    config = config.resolved()
    if config.front_end == "none":
        q = config.sample_rate or min(1.0, config.batch_per_class * dataset.num_classes / len(dataset))
        steps = config.releases
    else:
        q = config.sample_rate or min(1.0, config.head_batch / len(dataset))
        steps = math.ceil(config.head_epochs / q) + releases_before_head(config)
        if steps > MAX_RELEASES:
            raise EngineError(f"{config.head_epochs:g} epochs at q={q:.3g} are {steps} DP-SGD steps, more than "
                              f"{MAX_RELEASES:,}: no run of that length finishes")
    if not config.private:
        sigma = 0.0
    elif config.noise_multiplier is not None:
        sigma = float(config.noise_multiplier)
    else:
        sigma = calibrate_noise_multiplier(config.epsilon, config.delta, q, steps, config.accountant)
    mechanism = Mechanism(sigma, q, steps, config.clip_norm)
    epsilon = epsilon_of_history([mechanism], config.delta, config.accountant)
    if config.private and config.noise_multiplier is None and epsilon > config.epsilon:
        raise EngineError(f"calibrated ε={epsilon} exceeds the target {config.epsilon}")
    return Plan(mechanism, epsilon, config.delta, config.accountant)


def releases_before_head(config: DistillConfig) -> int:
    """A front-end run's releases of its mechanism before the head's DP-SGD: the histogram and the mean feature."""
    return COUNT_RELEASES + config.mean_releases


def head_mechanism(mechanism: Mechanism, config: DistillConfig) -> Mechanism:
    """The share of a front-end run's planned mechanism that its head's DP-SGD takes."""
    return replace(mechanism, steps=mechanism.steps - releases_before_head(config))


def site_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, mechanism: Mechanism,
              config: DistillConfig, channels: int, secret: int, progress: bool = False,
              on_step: Callable[[int], None] | None = None) -> tuple[tuple[float, ...], torch.nn.Linear]:
    """A front-end run's one mechanism on the records' fixed `features`: the noisy class histogram, the noisy
    mean feature, then DP-SGD of the head on the features centred by it (a head on the features again)."""
    config = config.resolved()
    counts = noisy_class_counts(labels, num_classes, mechanism, secret=secret + 2)
    centre = noisy_feature_mean(features, mechanism, config.mean_releases, channels, secret=secret + 4)
    head = train_head(features, labels, num_classes, head_mechanism(mechanism, config), lr=config.head_lr,
                      momentum=0.9, secret=secret, progress=progress, on_step=on_step, centre=centre)
    return counts, head


def _network(dataset: ImageDataset, config: DistillConfig) -> ConvNet:
    c, h, _ = dataset.image_shape
    return ConvNet(c, dataset.num_classes, h, config.width, config.depth, config.norm)


def released_names(net: torch.nn.Module, layers: int) -> list[str]:
    """The parameters a release carries: all trainable ones (`layers` 0), else the weights of the last `layers`
    conv/linear layers. Biases and norm scales are never matched (`matching_distance` skips 1-D tensors), so a
    partial release leaves them out rather than spend clip norm and noise on them."""
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if layers == 0:
        return names
    weights = [n for n, p in net.named_parameters() if p.requires_grad and p.ndim > 1]
    if layers > len(weights):
        raise ValueError(f"release_layers={layers} but the network has only {len(weights)} weight layers")
    return weights[-layers:]


# ---- the run ------------------------------------------------------------------------------------
@dataclass
class _RunState:
    """What a run carries across a checkpoint: its identity, secret, progress and ledger anchor."""

    run_id: str
    spend: dict[str, Any]  # the ledger's spend entry for the run (its seq and hash anchor the claim)
    secret: int | None = None
    start: int = 0
    tensors: dict[str, torch.Tensor] | None = None
    saved: dict[str, Any] = field(default_factory=dict)
    finished: Claim | None = None  # set when the run crashed after its set was final


def distill(
    dataset: ImageDataset,
    config: DistillConfig,
    ledger: Ledger,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    secret_seed: int | None = None,
    progress: bool = True,
    on_iteration: Callable[[int], None] | None = None,
    dataset_label: str | None = None,
    on_synthesis: Callable[[int], None] | None = None,
) -> DistillResult:
    """Distil `dataset` into `config.ipc` images per class under the planned (ε, δ); write and return the set.

    Everything that can fail is checked before the spend (settings, data, network, device, output
    folder). `secret_seed` seeds Poisson sampling and noise; leave it None outside tests, so both
    come from the OS's randomness and are never recorded anywhere that leaves the site.
    `on_iteration(done)` follows the spend: outer iterations (pixels) or DP-SGD steps (a front end);
    `on_synthesis(done)` a front end's image updates after it.
    """
    started = time.time()
    config = config.resolved()  # 'auto' settings take their values at this ε, and the claim records those
    validate(dataset, config)
    dev = resolve_device(device)
    probe(dataset, config, dev)  # before the plan: a network that cannot run is refused before σ's search
    the_plan = plan(dataset, config)
    label = dataset_label or dataset.name
    config_dict = json.loads(json.dumps(json_safe(asdict(config))))  # strict JSON, as it is compared on resume
    num_classes, (channels, size, _) = dataset.num_classes, dataset.image_shape
    labels = torch.arange(num_classes).repeat_interleave(config.ipc)
    _claim_fits(dataset, config, the_plan, label, config_dict)
    ledger.entries()  # a damaged ledger stops the run before its folder is made
    with RunFolder(Path(out_dir)) as folder:
        # the public start: images in model space (pixels), or pixel logits (a front end)
        initial = torch.randn(num_classes * config.ipc, channels, size, size, generator=generator(config.seed)) * 0.5
        initial = initial.clamp(-1, 1) if config.front_end == "none" else initial
        run = _start_or_resume(folder, ledger, the_plan, config_dict, secret_seed, label, initial)
        if run.finished is not None:  # the set was final before a crash: release it, nothing is recomputed
            return _publish(folder, ledger, run.finished, run.tensors["images"], labels, run.start, started,
                            run.tensors.get("soft_labels"))
        if config.front_end == "none":
            claim, images = _run(dataset, config, the_plan, run, folder, dev, labels, label, config_dict, progress,
                                 on_iteration)
            soft = None
        else:
            claim, images, soft = _run_front_end(dataset, config, the_plan, run, dev, labels, label, config_dict,
                                                 progress, on_iteration, on_synthesis)
        final = {"images": images} | ({} if soft is None else {"soft_labels": soft})
        folder.save({"run_id": run.run_id, "finished": True, "config": config_dict, "claim": claim.to_json()},
                    final)  # the secret seed leaves the disk before anything is released
        return _publish(folder, ledger, claim, images, labels, run.start, started, soft)


def _run_claim(dataset: ImageDataset, config: DistillConfig, the_plan: Plan, label: str, config_dict: dict, *,
               run_id: str, sha256: str, dimension: int, signal: list[float] | None, spend: dict[str, Any],
               counts: tuple[float, ...] | None = None) -> Claim:
    """The run's claim: its plan, settings and data shape, with what only the run knows (hash, signal, spend)."""
    m = the_plan.mechanism
    return Claim(run_id=run_id, epsilon=the_plan.epsilon, delta=the_plan.delta, noise_multiplier=m.noise_multiplier,
                 sample_rate=m.sample_rate, releases=m.steps, clip_norm=m.clip_norm, accountant=the_plan.accountant,
                 ipc=config.ipc, classes=tuple(dataset.classes), image_shape=tuple(dataset.image_shape),
                 dataset=label, sha256=sha256, seed=config.seed, release_dimension=dimension,
                 class_signal=None if signal is None else tuple(signal), ledger_seq=spend["seq"],
                 ledger_head=spend["hash"], config=config_dict, versions=library_versions(),
                 front_end=config.front_end, soft_labels=config.front_end != "none", class_counts=counts)


def _claim_fits(dataset: ImageDataset, config: DistillConfig, the_plan: Plan, label: str, config_dict: dict) -> None:
    """Build the run's claim with placeholder hashes: a class name or label the claim cannot carry fails here,
    before the spend, not after the run."""
    try:
        _run_claim(dataset, config, the_plan, label, config_dict, run_id="0" * 32, sha256="0" * 64, dimension=1,
                   signal=None, spend={"seq": 1, "hash": "0" * 64})
    except ClaimError as err:
        raise EngineError(f"this run's claim could not be sent: {err}") from None


def _start_or_resume(folder: RunFolder, ledger: Ledger, the_plan: Plan, config_dict: dict, secret_seed: int | None,
                     label: str, initial: torch.Tensor) -> _RunState:
    """Resume the folder's checkpoint, or start a run: checkpoint first, then the spend entry, so that a
    crash between the two resumes the same run instead of spending again."""
    resumed = folder.load()
    if resumed is None:
        run_id = uuid.uuid4().hex
        secret = secret_seed if secret_seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        folder.save(_state(run_id, secret, 0, config_dict, None, 0), {"synthetic": initial})
        spend = _spend(folder, ledger, run_id, the_plan, config_dict, label)
        return _RunState(run_id, spend, secret, 0, {"synthetic": initial})
    state, tensors = resumed
    if state.get("config") != config_dict:
        raise EngineError(f"{folder.checkpoint_dir} holds an unfinished run with a different configuration; finish it "
                          "with its own settings, or delete that folder to abandon it (its budget stays spent)")
    run_id = state["run_id"]
    spend = ledger.spend_for(run_id)
    if state.get("finished"):
        if spend is None:
            raise EngineError(f"finished run {run_id} has no spend entry in {ledger.path}: wrong ledger?")
        try:
            claim = Claim.from_json(state["claim"])
        except (ClaimError, KeyError) as err:
            raise EngineError(f"{folder.checkpoint_dir}: the finished run's claim is damaged ({err})") from None
        return _RunState(run_id, spend, start=-1, tensors=tensors, finished=claim)
    start = state.get("iteration")
    if not isinstance(start, int) or not isinstance(state.get("secret_seed"), int):
        raise EngineError(f"{folder.checkpoint_dir} is damaged; delete it to abandon that run (its budget stays spent)")
    if spend is None:
        if start != 0:
            raise EngineError(f"checkpoint of run {run_id} is at iteration {start} but {ledger.path} has no spend "
                              "entry for it: wrong ledger?")
        spend = _spend(folder, ledger, run_id, the_plan, config_dict, label)  # killed before the spend: spend now
    elif spend["mechanism"] != the_plan.mechanism.to_dict():
        raise EngineError(f"run {run_id} was accounted as {spend['mechanism']}, not {the_plan.mechanism.to_dict()}")
    if ledger.released(run_id):
        folder.remove_checkpoint()  # never leave the secret seed beside a released run
        raise EngineError(f"run {run_id} was already released; its checkpoint is removed")
    return _RunState(run_id, spend, int(state["secret_seed"]), start, tensors, state)


def _spend(folder: RunFolder, ledger: Ledger, run_id: str, the_plan: Plan, config_dict: dict, label: str) -> dict:
    """Write the run's spend entry; when the ledger refuses, the checkpoint goes too (nothing was read or spent)."""
    try:
        return ledger.spend(run_id, the_plan.mechanism, the_plan.delta, the_plan.accountant,
                            {"epsilon": None if math.isinf(the_plan.epsilon) else the_plan.epsilon, "dataset": label,
                             "config": config_dict, "versions": library_versions()})
    except LedgerError:
        folder.remove_checkpoint()
        raise


def _publish(folder: RunFolder, ledger: Ledger, claim: Claim, images: torch.Tensor, labels: torch.Tensor,
             resumed_from: int, started: float, soft: torch.Tensor | None = None) -> DistillResult:
    """Record the release (once), then write the set and drop the checkpoint."""
    if content_hash(images, labels, soft) != claim.sha256:
        raise EngineError(f"{folder.checkpoint_dir}: the finished images do not match their claim; delete the folder")
    if not ledger.released(claim.run_id):
        ledger.record_release(claim.run_id, claim.sha256)  # recorded before anything is written out
    result = SyntheticSet(images, labels, claim, soft_labels=soft)
    save_synthetic_set(folder.path, result)
    folder.remove_checkpoint()
    return DistillResult(result, folder.path, claim.run_id, max(resumed_from, 0), time.time() - started)


def _run(dataset: ImageDataset, config: DistillConfig, the_plan: Plan, run: _RunState, folder: RunFolder,
         dev: torch.device, labels: torch.Tensor, label: str, config_dict: dict, progress: bool,
         on_iteration: Callable[[int], None] | None) -> tuple[Claim, torch.Tensor]:
    """The iterations from `run.start` and the replay passes; returns the claim and the final 8-bit images."""
    num_classes = dataset.num_classes
    run_id, secret, start, tensors, state = run.run_id, run.secret, run.start, run.tensors, run.saved
    synthetic = tensors["synthetic"].to(dev).requires_grad_(True)
    image_opt = torch.optim.SGD([synthetic], lr=config.lr_images, momentum=config.momentum_images)
    if "momentum" in tensors:
        image_opt.state[synthetic]["momentum_buffer"] = tensors["momentum"].to(dev)

    template = _network(dataset, config)  # every draw has its parameters, so the released ones are named once
    released = released_names(template, config.release_layers)
    dimension = sum(p.numel() for n, p in template.named_parameters() if n in released)  # numbers per release
    augmenter = Augmenter() if config.augment else None
    mech = the_plan.mechanism
    net = template.to(dev)  # the run's one network: every iteration loads its fresh public draw
    twin = copy.deepcopy(net)  # hook-free twin for the synthetic passes; it computes with net's own parameters
    by_class = [to_model_space(dataset.images[dataset.labels == c]).to(dev) for c in range(num_classes)]
    release = PoissonClassRelease(net, by_class, mech, secret, released,
                                  class_groups(num_classes, config.classes_per_pass, dev), augmenter)
    del by_class
    history: list[float] = []
    kept = ReleaseStore()  # the releases the replay passes match again (post-processing; never leaves the site)
    # Σ over releases of ‖ĝ_c‖² per class, for the claim's class signal (post-processing of the releases)
    signal_sq = torch.tensor(state.get("signal_sq") or [0.0] * num_classes, dtype=torch.float64, device=dev)
    signal_releases = int(state.get("signal_releases") or 0)
    if config.replay_epochs and start > 0:
        names = [n for n, p in template.named_parameters() if p.requires_grad]
        kept = ReleaseStore.load(folder.checkpoint_dir, start, names, dev)

    spent = ""  # the bar's ε, refreshed every SPENT_EVERY iterations
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc="distilling", unit="it", dynamic_ncols=True)
    for t in bar:
        draw_seed = (config.seed * 1_000_003 + t + 1) % (2**63)  # public: this iteration's network and views
        public = generator(draw_seed)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(draw_seed)
            net.load_state_dict(_network(dataset, config).state_dict())
        release.start_iteration(t)
        params = {name: p for name, p in net.named_parameters() if p.requires_grad}
        net_opt = torch.optim.SGD(net.parameters(), lr=config.lr_net, momentum=0.5)
        loss_sum = 0.0
        for k in range(config.inner_steps):
            # the release: one noised gradient per class (the only real-data path); classes are disjoint
            views = [augmenter.sample(public) if augmenter is not None else None for _ in range(num_classes)]
            targets = release(views)
            signal_sq += _squared_norms(targets)
            signal_releases += 1
            syn_views = None if augmenter is None else per_example(views, [config.ipc] * num_classes)
            if config.replay_epochs:
                kept.add(params, syn_views, targets)
            for _ in range(config.image_steps):  # post-processing: S may chase the released targets several times
                loss_sum += _match_step(image_opt, synthetic, twin, params, released, syn_views, targets,
                                        augmenter, num_classes, config.match_per) / config.image_steps
            if k < config.inner_steps - 1:
                _train_net_on_synthetic(twin, params, net_opt, synthetic.detach(), labels.to(dev), config.net_steps,
                                        augmenter, public)
        history.append(loss_sum / (config.inner_steps * num_classes))
        done = t + 1
        if progress:
            if done % SPENT_EVERY == 0 or done == config.iterations or spent == "":
                spent = _spent_so_far(the_plan, done * config.inner_steps)
            bar.set_postfix(loss=f"{history[-1]:.3f}", eps=spent)
        if done % config.checkpoint_every == 0 and done < config.iterations:
            momentum = image_opt.state[synthetic].get("momentum_buffer")
            if config.replay_epochs:
                kept.save(folder.checkpoint_dir, done)  # before the state that counts them
            folder.save(_state(run_id, secret, done, config_dict, signal_sq, signal_releases),
                        {"synthetic": synthetic} | ({} if momentum is None else {"momentum": momentum}))
        if on_iteration is not None:
            on_iteration(done)
    bar.close()
    del release  # the records' copy; the hooks are already off (NoisyClassGradients turns them off after each release)
    if config.replay_epochs and kept:
        _replay(kept, config.replay_epochs, config.replay_lr_end, image_opt, synthetic, twin, released, augmenter,
                num_classes, config.match_per, generator(config.seed * 1_000_003), progress)

    images = quantise(to_pixel_space(synthetic.detach()))  # 8-bit pixels: one byte each on the wire
    if not bool(torch.isfinite(synthetic).all()):
        raise EngineError("the synthetic images diverged (NaN); lower --lr-images. The budget stays spent.")
    claim = _run_claim(dataset, config, the_plan, label, config_dict, run_id=run_id,
                       sha256=content_hash(images, labels), dimension=dimension,
                       signal=class_signal(signal_sq, signal_releases, mech, dimension), spend=run.spend)
    return claim, images


def _run_front_end(dataset: ImageDataset, config: DistillConfig, the_plan: Plan, run: _RunState, dev: torch.device,
                   labels: torch.Tensor, label: str, config_dict: dict, progress: bool,
                   on_step: Callable[[int], None] | None = None,
                   on_synthesis: Callable[[int], None] | None = None) -> tuple[Claim, torch.Tensor, torch.Tensor]:
    """DP-SGD of a linear head on the fixed front end's features (the one mechanism), then images fitted to the
    head and its soft labels on them (post-processing). A resumed run repeats it with the same secret."""
    front_end = build_front_end(config.front_end, dataset.image_shape).to(dev).eval()
    features = front_end.features(dataset.images.to(dev))  # a fixed map of each record: not a release
    counts, head = site_head(features, dataset.labels.to(dev), dataset.num_classes, the_plan.mechanism, config,
                             front_end.feature_channels, run.secret, progress, on_step)
    del features
    images = synthesise(head, front_end, labels.to(dev), steps=config.synthesis_steps,
                        schedule=config.synthesis_schedule, initial=run.tensors["synthetic"].to(dev),
                        class_pull=config.class_pull, progress=progress, on_step=on_synthesis)
    if not bool(torch.isfinite(images).all()):  # before quantising, which would turn NaN into black pixels
        raise EngineError("the synthetic images diverged (NaN). The budget stays spent.")
    images = quantise(images)  # 8-bit pixels: one byte each on the wire
    soft = soft_labels(head, front_end, images.to(dev), config.temperature).cpu()
    claim = _run_claim(dataset, config, the_plan, label, config_dict, run_id=run.run_id,
                       sha256=content_hash(images, labels, soft), dimension=head.weight.numel() + head.bias.numel(),
                       signal=None, spend=run.spend, counts=counts)
    return claim, images, soft


def _match_step(
    image_opt: torch.optim.Optimizer,
    synthetic: torch.Tensor,
    twin: torch.nn.Module,
    params: dict[str, torch.Tensor],
    released: Sequence[str],
    views: AugmentParams | None,
    targets: list[torch.Tensor],
    augmenter: Augmenter | None,
    num_classes: int,
    per: str = "unit",
) -> float:
    """One update of S towards one release's noised class gradients, every class in one pass; returns the distance."""
    image_opt.zero_grad(set_to_none=True)
    syn = synthetic if views is None else augmenter.apply(synthetic, views)  # each class sees its real batch's view
    syn_grads = _class_gradients(twin, params, released, syn.view(num_classes, -1, *syn.shape[1:]))
    loss = matching_distance(targets, syn_grads, batch_dims=1, per=per).sum()
    torch.autograd.backward(loss, inputs=[synthetic])  # only S learns from the match
    image_opt.step()
    with torch.no_grad():
        synthetic.clamp_(-1.0, 1.0)
    return float(loss.detach())


def _replay(kept: ReleaseStore, epochs: int, lr_end: float, image_opt: torch.optim.Optimizer,
            synthetic: torch.Tensor, twin: torch.nn.Module, released: Sequence[str], augmenter: Augmenter | None,
            num_classes: int, per: str, order: torch.Generator, progress: bool) -> None:
    """Match every kept release again, `epochs` times in a public random order: post-processing of the releases.

    The image learning rate decays linearly to `lr_end` × its value over the passes (1: constant).
    """
    decay = torch.optim.lr_scheduler.LinearLR(image_opt, start_factor=1.0, end_factor=lr_end,
                                              total_iters=max(epochs * len(kept) - 1, 1))
    bar = tqdm(total=epochs * len(kept), disable=not progress, desc="replaying", unit="release", dynamic_ncols=True)
    for _ in range(epochs):
        for i in torch.randperm(len(kept), generator=order).tolist():
            release = kept.releases[i]
            loss = _match_step(image_opt, synthetic, twin, release.params, released, release.views, release.targets,
                               augmenter, num_classes, per)
            decay.step()
            bar.update()
            bar.set_postfix(loss=f"{loss / num_classes:.3f}", refresh=False)
    bar.close()


def _spent_so_far(the_plan: Plan, releases: int) -> str:
    """ε of the releases made so far, by the plan's accountant (refreshed every SPENT_EVERY iterations)."""
    m = the_plan.mechanism
    done = Mechanism(m.noise_multiplier, m.sample_rate, releases, m.clip_norm)
    with warnings.catch_warnings():  # early on, ε is tiny and Opacus asks for more RDP orders: harmless here
        warnings.simplefilter("ignore", UserWarning)
        return f"{epsilon_of_history([done], the_plan.delta, the_plan.accountant):.3g}"


def _state(run_id: str, secret: int, iteration: int, config: dict, signal_sq: torch.Tensor | None,
           signal_releases: int) -> dict:
    """A running checkpoint's state (holds the secret seed: local to the site, mode 0600)."""
    return {"run_id": run_id, "secret_seed": secret, "iteration": iteration, "config": config,
            "signal_sq": None if signal_sq is None else signal_sq.tolist(), "signal_releases": signal_releases}


def _squared_norms(targets: list[torch.Tensor]) -> torch.Tensor:
    """‖ĝ_c‖² over all parameters, one value per class (float64, on the targets' device: no sync per release)."""
    return torch.stack([t.reshape(t.shape[0], -1).double().pow(2).sum(1) for t in targets]).sum(0)


def class_signal(signal_sq: torch.Tensor, releases: int, mechanism: Mechanism, dimension: int) -> list[float] | None:
    """Per class, how many records' worth of clipped gradient its releases carried, from the releases alone.

    E‖ĝ_c‖² = ‖Σ clip(∇)‖² + σ²C²d, so √(mean ‖ĝ_c‖² − σ²C²d) / C estimates the norm of the class's
    clipped sum in units of C: about 0.86·q·n_c on Fashion-MNIST (per-example gradients of one
    class point alike at a fresh network), 0 for a class the site lacks. Post-processing of the
    noised releases and public (σ, C, d): it costs no privacy. None without releases.
    """
    if releases == 0:
        return None
    noise_sq = (mechanism.noise_multiplier * mechanism.clip_norm) ** 2 * dimension
    excess = (signal_sq / releases - noise_sq).clamp(min=0.0)
    return [round(float(v), 4) for v in excess.sqrt() / mechanism.clip_norm]


def _class_gradients(twin: torch.nn.Module, params: dict[str, torch.Tensor], released: Sequence[str],
                     images: torch.Tensor) -> list[torch.Tensor]:
    """∇θ ℓ(f_θ(S_c), c) for every class c at once, [classes, *p.shape] per released parameter; differentiable in S.

    `images` is [classes, ipc, C, H, W]; torch.func runs the classes as one batched pass.
    """
    wanted = {name: params[name] for name in released}
    fixed = {name: p for name, p in params.items() if name not in wanted}

    def class_gradient(class_images: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = functional_call(twin, {**fixed, **p}, (class_images,))
            return F.cross_entropy(logits, label.expand(class_images.shape[0]), reduction="sum")

        return grad(loss)(wanted)

    per_class = vmap(class_gradient)(images, torch.arange(images.shape[0], device=images.device))
    return [per_class[name] for name in released]


def _train_net_on_synthetic(
    twin: torch.nn.Module,
    params: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    augmenter: Augmenter | None,
    generator: torch.Generator,
) -> None:
    """θ ← θ − η ∇θ ℓ(f_θ(S)): uses the synthetic set only, so it costs no privacy."""
    for _ in range(steps):
        x = augmenter.apply(images, augmenter.sample(generator, per_example=images.shape[0])) if augmenter else images
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(functional_call(twin, params, (x,)), labels).backward()
        optimizer.step()
