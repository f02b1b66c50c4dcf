"""The private distillation engine: PSG-family DP gradient matching at one site.

    S ← noise
    for t in 1..T:  θ ← fresh draw
        for k in 1..K:
            for each class c:  B_c ← Poisson(D_c, q);  ĝ_c ← Σ clip(∇θ ℓ(B_c)) + N(0, σ²C²)   (only real-data path)
                               repeat M times:  S ← S − η ∇_S Σ_c dist(ĝ_c, ∇θ ℓ(f_θ(aug(S_c))))   (same augmentation as the real batch)
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
import shutil
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from client.matching import UNITS as MATCH_UNITS, matching_distance
from client.noisy_gradient import NoisyClassGradients
from client.release_store import ReleaseStore
from common.augment import Augmenter, AugmentParams, per_example
from common.data import DataError, ImageDataset, to_model_space, to_pixel_space
from common.ledger import Ledger
from common.models import ConvNet, check_private
from common.privacy.accounting import (
    ACCOUNTANTS,
    Mechanism,
    calibrate_noise_multiplier,
    check_delta,
    epsilon_of_history,
)
from common.synthetic_set import SyntheticSet, content_hash, json_safe, quantise, save_synthetic_set
from common.versions import library_versions

CHECKPOINT_DIR = ".fedsynth-checkpoint"


class EngineError(RuntimeError):
    """The engine refuses to run (or to resume) as asked; nothing was spent."""


@dataclass
class DistillConfig:
    """Everything that decides a distillation run. `epsilon=inf` (or `noise_multiplier=0`) means no noise."""

    ipc: int = 10
    epsilon: float = 10.0
    delta: float = 1e-5
    noise_multiplier: float | None = None  # give σ directly instead of a target ε
    accountant: str = "rdp"
    iterations: int = 200  # T: outer iterations, each on a freshly drawn network
    inner_steps: int = 5  # K: noisy releases per outer iteration
    net_steps: int = 1  # updates of θ on the synthetic set between releases (free)
    image_steps: int = 1  # updates of S against each release's targets (free post-processing)
    replay_epochs: int = 0  # after the run, passes of image updates over every kept release (free post-processing:
    # each release's noise enters many small updates that average it, instead of one it is chased by)
    replay_lr_end: float = 1.0  # image learning rate at the end of the replay passes, as a fraction of lr_images
    # (linear decay from 1: the last updates average the releases' noise instead of chasing the last few; free)
    batch_per_class: float = 64.0  # expected real records per class per release; sets q
    sample_rate: float | None = None  # give q directly instead
    clip_norm: float = 1.0
    release_layers: int = 2  # release (and match) only the weights of the network's last N conv/linear layers;
    # 0 releases every parameter. The first convolutions' noised gradients cost more than they teach: on all of
    # Fashion-MNIST the last two layers scored 75.9 % at ε = 1 against 72.2 % for all of them (bench/distill.py).
    # Fewer coordinates carry the same noise per coordinate but the whole clip norm C; 1 (the classifier alone)
    # matches what are in effect class means of the last features, as DP distribution matching does.
    match_per: str = "unit"  # cosine per output unit's gradient row (DC's distance), or "layer": one per layer,
    # which weighs rows by their size instead of counting a noise-dominated row as much as the loudest
    width: int = 32
    depth: int = 3
    norm: str = "instancenorm"
    lr_images: float = 1.0
    momentum_images: float = 0.5
    lr_net: float = 0.01
    augment: bool = True
    every_class_populated: bool = True  # refuse classes with fewer than ipc records (False: a federated site
    # distils every class anyway; a sparse class is matched against mostly-noise gradients, never skipped,
    # since skipping would reveal which classes the site holds)
    seed: int = 0
    checkpoint_every: int = 10
    classes_per_pass: int = 0  # classes whose releases share one per-example pass (same mechanism, fewer kernel
    # launches, more memory): 0 = all of them on CUDA, where launches bound the speed; one on CPU, where memory does

    @property
    def releases(self) -> int:
        """Number of composed Poisson-subsampled Gaussian releases: T·K."""
        return self.iterations * self.inner_steps

    @property
    def private(self) -> bool:
        return not (math.isinf(self.epsilon) or self.noise_multiplier == 0.0)


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
    history: list[float] = field(default_factory=list)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """CUDA when present (or asked), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def validate(dataset: ImageDataset, config: DistillConfig) -> None:
    """Every refusal that can be decided before budget is spent."""
    if config.ipc < 1:
        raise DataError(f"ipc must be at least 1, got {config.ipc}")
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
    if not (config.epsilon > 0):
        raise ValueError(f"epsilon must be > 0, got {config.epsilon}")
    if config.noise_multiplier is not None and config.noise_multiplier < 0:
        raise ValueError(f"noise multiplier must be >= 0, got {config.noise_multiplier}")
    check_delta(config.delta, len(dataset))
    if config.accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {config.accountant!r}")
    if config.iterations < 1 or config.inner_steps < 1 or config.image_steps < 1:
        raise ValueError("iterations, inner steps and image steps must be at least 1")
    if config.match_per not in MATCH_UNITS:
        raise ValueError(f"match_per must be one of {', '.join(MATCH_UNITS)}, got {config.match_per!r}")
    if config.release_layers < 0:
        raise ValueError(f"release layers must be >= 0 (0: all), got {config.release_layers}")
    if config.replay_epochs < 0 or not (0.0 < config.replay_lr_end <= 1.0):
        raise ValueError(f"replay epochs must be >= 0 and replay-lr-end in (0, 1], got {config.replay_epochs} and "
                         f"{config.replay_lr_end}")
    network = _network(dataset, config)
    check_private(network)
    released_names(network, config.release_layers)  # more layers than the network has: refused here, before any spend


def plan(dataset: ImageDataset, config: DistillConfig) -> Plan:
    """Sample rate, σ and ε of the run. The record count n enters only through q (public by design, as in DP-SGD)."""
    q = config.sample_rate or min(1.0, config.batch_per_class * dataset.num_classes / len(dataset))
    steps = config.releases
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


def _generator(seed: int, device: torch.device = torch.device("cpu")) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed % (2**63))


# ---- checkpoints (local to the site; never uploaded) -------------------------------------------
def _checkpoint_dir(out_dir: Path) -> Path:
    return out_dir / CHECKPOINT_DIR


def _save_checkpoint(out_dir: Path, state: dict, synthetic: torch.Tensor, momentum: torch.Tensor | None) -> None:
    ckpt = _checkpoint_dir(out_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    os.chmod(ckpt, 0o700)
    tensors = {"synthetic": synthetic.detach().cpu().contiguous()}
    if momentum is not None:
        tensors["momentum"] = momentum.detach().cpu().contiguous()
    save_file(tensors, str(ckpt / "tensors.partial"))
    os.replace(ckpt / "tensors.partial", ckpt / "tensors.safetensors")
    tmp = ckpt / "state.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the secret seed
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle)
    os.replace(tmp, ckpt / "state.json")


def _load_checkpoint(out_dir: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    ckpt = _checkpoint_dir(out_dir)
    if not (ckpt / "state.json").exists():
        return None
    return json.loads((ckpt / "state.json").read_text()), load_file(str(ckpt / "tensors.safetensors"))


# ---- the run ------------------------------------------------------------------------------------
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
) -> DistillResult:
    """Distil `dataset` into `config.ipc` images per class under the planned (ε, δ); write and return the set.

    `secret_seed` seeds Poisson sampling and noise; leave it None outside tests, so both
    come from the OS's randomness and are never recorded anywhere that leaves the site.
    """
    started = time.time()
    out = Path(out_dir)
    validate(dataset, config)
    the_plan = plan(dataset, config)
    dev = resolve_device(device)
    config_dict = json_safe(asdict(config))  # strict JSON: the claim is signed as JSON (ε = ∞ → null)

    resumed = _load_checkpoint(out)
    if resumed is not None:
        state, tensors = resumed
        if state["config"] != json.loads(json.dumps(config_dict)):
            raise EngineError(
                f"{_checkpoint_dir(out)} holds an unfinished run with a different configuration; finish it with "
                "its own settings, or delete that folder to abandon it (its budget stays spent)"
            )
        run_id, secret, start = state["run_id"], int(state["secret_seed"]), int(state["iteration"])
        spend = ledger.spend_for(run_id)
        if spend is None:
            raise EngineError(f"checkpoint of run {run_id} has no spend entry in {ledger.path}: wrong ledger?")
        if spend["mechanism"] != the_plan.mechanism.to_dict():
            raise EngineError(f"run {run_id} was accounted as {spend['mechanism']}, not {the_plan.mechanism.to_dict()}")
        if ledger.released(run_id):
            raise EngineError(f"run {run_id} was already released; delete {_checkpoint_dir(out)}")
    else:
        run_id = uuid.uuid4().hex
        secret = secret_seed if secret_seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        start, tensors, state = 0, None, {}
        ledger.spend(
            run_id,
            the_plan.mechanism,
            the_plan.delta,
            the_plan.accountant,
            {
                "epsilon": None if math.isinf(the_plan.epsilon) else the_plan.epsilon,
                "dataset": dataset_label or dataset.name,
                "config": config_dict,
                "versions": library_versions(),
            },
        )

    num_classes, (channels, size, _) = dataset.num_classes, dataset.image_shape
    labels = torch.arange(num_classes).repeat_interleave(config.ipc)
    if tensors is None:
        init = torch.randn(num_classes * config.ipc, channels, size, size, generator=_generator(config.seed))
        synthetic = (init * 0.5).clamp(-1, 1)
    else:
        synthetic = tensors["synthetic"]
    synthetic = synthetic.to(dev).requires_grad_(True)
    image_opt = torch.optim.SGD([synthetic], lr=config.lr_images, momentum=config.momentum_images)
    if tensors is not None and "momentum" in tensors:
        image_opt.state[synthetic]["momentum_buffer"] = tensors["momentum"].to(dev)

    by_class = [to_model_space(dataset.images[dataset.labels == c]) for c in range(num_classes)]
    counts = [int(x.shape[0]) for x in by_class]
    real = torch.cat(by_class).to(dev)  # class-sorted; class c's records start at offsets[c]
    offsets = [sum(counts[:c]) for c in range(num_classes)]
    groups = _class_groups(num_classes, config.classes_per_pass, dev)
    template = _network(dataset, config)  # every draw has its parameters, so the released ones are named once
    released = released_names(template, config.release_layers)
    dimension = sum(p.numel() for n, p in template.named_parameters() if n in released)  # numbers per release
    augmenter = Augmenter() if config.augment else None
    mech = the_plan.mechanism
    history: list[float] = []
    kept = ReleaseStore()  # the releases the replay passes match again (post-processing; never leaves the site)
    # Σ over releases of ‖ĝ_c‖² per class, for the claim's class signal (post-processing of the releases)
    signal_sq = torch.tensor(state.get("signal_sq") or [0.0] * num_classes, dtype=torch.float64, device=dev)
    signal_releases = int(state.get("signal_releases") or 0)
    if config.replay_epochs and start > 0:
        names = [n for n, p in template.named_parameters() if p.requires_grad]
        kept = ReleaseStore.load(_checkpoint_dir(out), start, names, dev)
    if start == 0:
        _save_checkpoint(out, _state(run_id, secret, 0, config_dict, signal_sq, 0), synthetic, None)

    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not progress,
               desc="distilling", unit="it", dynamic_ncols=True)
    for t in bar:
        draw_seed = (config.seed * 1_000_003 + t + 1) % (2**63)  # public: this iteration's network and views
        public = _generator(draw_seed)
        sampling = _generator(secret + 7919 * t)
        noise = _generator(secret + 7919 * t + 1, dev)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(draw_seed)
            net = _network(dataset, config)
        net = net.to(dev)
        twin = copy.deepcopy(net)  # hook-free twin for the synthetic passes; it computes with net's own parameters
        releaser = NoisyClassGradients(net, mech.clip_norm, mech.noise_multiplier, noise, released)
        params = {name: p for name, p in net.named_parameters() if p.requires_grad}
        net_opt = torch.optim.SGD(net.parameters(), lr=config.lr_net, momentum=0.5)
        loss_sum = 0.0
        for k in range(config.inner_steps):
            # the release: one noised gradient per class (the only real-data path); classes are disjoint
            masks = [torch.rand(n, generator=sampling) < mech.sample_rate for n in counts]
            views = [augmenter.sample(public) if augmenter is not None else None for _ in range(num_classes)]
            targets = _release(releaser, real, offsets, masks, views, groups, augmenter)
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
        releaser.module.disable_hooks()
        history.append(loss_sum / (config.inner_steps * num_classes))
        done = t + 1
        if progress:
            bar.set_postfix(loss=f"{history[-1]:.3f}", eps=_spent_so_far(the_plan, done * config.inner_steps))
        if done % config.checkpoint_every == 0 and done < config.iterations:
            momentum = image_opt.state[synthetic].get("momentum_buffer")
            if config.replay_epochs:
                kept.save(_checkpoint_dir(out), done)  # before the state that counts them
            _save_checkpoint(out, _state(run_id, secret, done, config_dict, signal_sq, signal_releases), synthetic,
                             momentum)
        if on_iteration is not None:
            on_iteration(done)
    bar.close()
    if config.replay_epochs and kept:
        _replay(kept, config.replay_epochs, config.replay_lr_end, image_opt, synthetic, twin, released, augmenter,
                num_classes, config.match_per, _generator(config.seed * 1_000_003), progress)

    images = quantise(to_pixel_space(synthetic.detach()))  # 8-bit pixels: one byte each on the wire
    claim = {
        "format": "fedsynth-claim/1",
        "run_id": run_id,
        "epsilon": None if math.isinf(the_plan.epsilon) else the_plan.epsilon,
        "delta": the_plan.delta,
        "noise_multiplier": mech.noise_multiplier,
        "sample_rate": mech.sample_rate,
        "steps": mech.steps,
        "clip_norm": mech.clip_norm,
        "accountant": the_plan.accountant,
        "ipc": config.ipc,
        "classes": list(dataset.classes),
        "image_shape": [channels, size, size],
        "dataset": dataset_label or dataset.name,
        "sha256": content_hash(images, labels),
        "config": config_dict,
        "seed": config.seed,
        "class_signal": class_signal(signal_sq, signal_releases, mech, dimension),
        "release_dimension": dimension,
        "versions": library_versions(),
    }
    ledger.record_release(run_id, claim["sha256"])  # recorded before anything is written out
    result = SyntheticSet(images, labels, claim)
    save_synthetic_set(out, result)
    shutil.rmtree(_checkpoint_dir(out), ignore_errors=True)
    return DistillResult(result, out, run_id, start, time.time() - started, history)


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
    """ε of the releases made so far (RDP: cheap enough to show every iteration)."""
    m = the_plan.mechanism
    done = Mechanism(m.noise_multiplier, m.sample_rate, releases, m.clip_norm)
    with warnings.catch_warnings():  # early on, ε is tiny and Opacus asks for more RDP orders: harmless here
        warnings.simplefilter("ignore", UserWarning)
        return f"{epsilon_of_history([done], the_plan.delta, 'rdp'):.3g}"


def _state(run_id: str, secret: int, iteration: int, config: dict, signal_sq: torch.Tensor, signal_releases: int) -> dict:
    return {"run_id": run_id, "secret_seed": secret, "iteration": iteration, "config": config,
            "signal_sq": signal_sq.tolist(), "signal_releases": signal_releases}


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


def _class_groups(num_classes: int, per_pass: int, device: torch.device) -> list[list[int]]:
    """Classes released together from one per-example pass, in class order."""
    n = per_pass or (num_classes if device.type == "cuda" else 1)
    return [list(range(c, min(c + n, num_classes))) for c in range(0, num_classes, n)]


def _release(
    releaser: NoisyClassGradients,
    real: torch.Tensor,
    offsets: Sequence[int],
    masks: Sequence[torch.Tensor],
    views: Sequence[AugmentParams | None],
    groups: Sequence[Sequence[int]],
    augmenter: Augmenter | None,
) -> list[torch.Tensor]:
    """Every class's noised gradient, one tensor [classes, *p.shape] per parameter; class c's batch is its Poisson mask."""
    parts = []
    for group in groups:
        picked = [masks[c].nonzero().squeeze(1) + offsets[c] for c in group]
        counts = [int(i.numel()) for i in picked]
        x = real.index_select(0, torch.cat(picked).to(real.device))
        if augmenter is not None:
            x = augmenter.apply(x, per_example([views[c] for c in group], counts))  # each class keeps its own view
        labels = torch.repeat_interleave(torch.as_tensor(group), torch.as_tensor(counts)).to(real.device)
        parts.append(releaser(x, labels, group))
    return [torch.cat(per_param) for per_param in zip(*parts)]


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
