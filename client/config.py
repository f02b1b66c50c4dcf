"""The engine's settings, each defined once: its default, range, help, CLI flag, run-config key and app default.

`DistillConfig` is a frozen keyword-only dataclass (jax_privacy's style). Each field's metadata
says how it appears elsewhere, and everything else is derived from it: `fedsynth distill`'s
flags (`add_arguments`, `from_arguments`), the run-config keys the server sends and the sites
read (`REQUEST_KEYS`, `from_request`), and the federated app's defaults (`app_defaults`), which a
test holds equal to `[tool.flwr.app.config]` in pyproject.toml.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from fedsynth.client.errors import EngineError
from fedsynth.client.feature_synthesis import SCHEDULES
from fedsynth.client.matching import UNITS as MATCH_UNITS
from fedsynth.common.claim import MAX_NOISE_MULTIPLIER, MAX_RELEASES, MAX_TEMPERATURE
from fedsynth.common.front_end import FRONT_ENDS
from fedsynth.common.models import NORMS
from fedsynth.common.privacy.accounting import ACCOUNTANTS, DEFAULT_ACCOUNTANT

MAX_ITERATIONS = 100_000  # T; with K, at most MAX_RELEASES releases (the most a claim may carry)
PIXELS, FRONT_END = "pixels", "front end"  # which engine reads a setting: front-end none, or any other
AUTO = "auto"  # a setting whose value follows the target ε (`auto_value`)


def auto_value(name: str, epsilon: float) -> float:
    """The value of the 'auto' setting `name` at target ε: the head's DP-SGD learning rate and epochs double per
    decade of ε, from 0.2 and 20 at ε ≤ 1 to 0.4 and 40 at ε ≥ 10 (measured on Dirichlet sites of a few thousand
    records at head-batch 1024: bench/aggregation.py --head-settings). ε is public, so the choice costs nothing."""
    decades = min(1.0, max(0.0, math.log10(epsilon))) if epsilon > 0 else 0.0
    return {"head_lr": 0.2, "head_epochs": 20.0}[name] * 2.0 ** decades


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None, open_low: bool = False,
            open_high: bool = False, flag: str | None = "", key: str | None = None, app: Any = MISSING,
            choices: tuple[str, ...] | None = None, engine: str | None = None, auto: bool = False,
            before: Any = MISSING) -> Any:
    """A DistillConfig field. `flag`: the CLI flag ("" derives `--name-with-dashes`, None: not on the CLI);
    `key`: the run-config key the federated app sends (None: not sent); `app`: the app's default where it
    differs from the engine's; `low`/`high`: the allowed range (open ends excluded); `engine`: PIXELS or
    FRONT_END for a setting only that engine reads (None: both); `auto`: the setting may also be AUTO;
    `before`: what runs recorded before the setting existed (a bench row without it) ran with; a setting
    without one has no such rows, or they are read with its default."""
    return field(default=default, metadata=dict(help=help, low=low, high=high, open_low=open_low,
                                                 open_high=open_high, flag=flag, key=key, app=app, choices=choices,
                                                 engine=engine, auto=auto, before=before))


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Everything that decides a distillation run. `epsilon=inf` (or `noise_multiplier=0`) means no noise."""

    ipc: int = setting(10, "synthetic images per class", low=1, high=10_000, key="ipc")
    front_end: str = setting("scatter", "none: gradient matching at random ConvNets on pixels; scatter: DP-SGD of a "
                             "linear head on ScatterNet features, distilled into images with soft labels",
                             choices=FRONT_ENDS, key="front-end", before="none")
    epsilon: float = setting(10.0, "target ε ('inf' = no noise, for research)", low=0.0, open_low=True,
                             high=math.inf, key="epsilon")
    delta: float = setting(1e-5, "target δ (below 1/n)", low=0.0, high=1.0, open_low=True, open_high=True,
                           key="delta")
    noise_multiplier: float | None = setting(None, "give σ directly instead of calibrating to --epsilon", low=0.0,
                                             high=MAX_NOISE_MULTIPLIER)
    accountant: str = setting(DEFAULT_ACCOUNTANT, "Opacus accountant that calibrates σ and reports ε",
                              choices=ACCOUNTANTS, key="accountant", before="rdp")
    iterations: int = setting(200, "outer iterations T, each on a freshly drawn network", low=1,
                              high=MAX_ITERATIONS, flag="--steps", key="steps", app=20, engine=PIXELS)
    inner_steps: int = setting(5, "noisy releases K per outer iteration", low=1, high=10_000, key="inner-steps",
                               engine=PIXELS)
    net_steps: int = setting(1, "network updates on S between releases (free)", low=0, high=10_000, engine=PIXELS)
    image_steps: int = setting(1, "updates of S against each release (free post-processing)", low=1, high=10_000,
                               engine=PIXELS)
    replay_epochs: int = setting(0, "passes over every release after the run, matching it again (free "
                                 "post-processing: a release's noise enters many small updates that average it)",
                                 low=0, high=10_000, key="replay-epochs", app=6, engine=PIXELS, before=0)
    replay_lr_end: float = setting(1.0, "image learning rate at the end of the replay passes, a fraction of "
                                   "--lr-images (linear decay)", low=0.0, high=1.0, open_low=True,
                                   key="replay-lr-end", app=0.1, engine=PIXELS, before=1.0)
    batch_per_class: float = setting(64.0, "expected records per class per release (sets q)", low=0.0, high=1e9,
                                     open_low=True, key="batch-per-class", engine=PIXELS,
                                     before=64.0)
    sample_rate: float | None = setting(None, "Poisson rate q (overrides --batch-per-class, or --head-batch)",
                                        low=0.0, high=1.0, open_low=True)
    clip_norm: float = setting(1.0, "per-example gradient bound C", low=0.0, high=1e6, open_low=True)
    release_layers: int = setting(2, "release and match only the last N weight layers' gradients (0: every "
                                  "parameter; the first convolutions' noised gradients cost more than they teach)",
                                  low=0, high=1_000, key="release-layers", engine=PIXELS, before=0)
    match_per: str = setting("unit", "gradient-matching cosine per output unit (DC's) or per whole layer",
                             choices=MATCH_UNITS, engine=PIXELS)
    width: int = setting(32, "distillation ConvNet width", low=1, high=4096, key="width", engine=PIXELS)
    depth: int = setting(3, "distillation ConvNet depth", low=1, high=64, engine=PIXELS)
    norm: str = setting("instancenorm", "distillation ConvNet normalisation", choices=NORMS, engine=PIXELS)
    lr_images: float = setting(1.0, "image learning rate", low=0.0, high=1e6, open_low=True, key="lr-images",
                               engine=PIXELS)
    momentum_images: float = setting(0.5, "image momentum", low=0.0, high=1.0, open_high=True, flag=None, engine=PIXELS)
    lr_net: float = setting(0.01, "network learning rate on the synthetic set", low=0.0, high=1e6, flag=None,
                            engine=PIXELS)
    augment: bool = setting(True, "differentiable siamese augmentation", flag=None, engine=PIXELS)
    every_class_populated: bool = setting(True, "refuse classes with fewer than ipc records (a federated site "
                                          "distils every class: skipping one would reveal it holds none)", flag=None)
    head_epochs: float | str = setting(20.0, "scatter: DP-SGD epochs of the head (steps = epochs / q; auto: by ε)",
                                       low=0.0, open_low=True, high=10_000.0, key="head-epochs", app=AUTO,
                                       engine=FRONT_END, auto=True, before=20.0)
    # one party with all of Fashion-MNIST: 4096 and 0.4; a federated site of ~6,000 records gains 2 points
    # at ε = 1 from more, smaller, gentler steps (bench/aggregation.py --head-settings)
    head_batch: float = setting(4096.0, "scatter: expected records per DP-SGD step (sets q)", low=0.0, high=1e9,
                                open_low=True, key="head-batch", app=1024.0, engine=FRONT_END,
                                before=4096.0)
    head_lr: float | str = setting(0.4, "scatter: DP-SGD learning rate of the head (momentum 0.9; auto: by ε)",
                                   low=0.0, high=1e6, open_low=True, key="head-lr", app=AUTO, engine=FRONT_END,
                                   auto=True, before=0.4)
    # +0.6 points on federated sites of a few thousand records at ε = 1 (bench/synthesis.py), +0.1 on one party
    # holding all of Fashion-MNIST (bench/distill.py --profile scatter-centred)
    mean_releases: int = setting(2, "scatter: releases of the mechanism that estimate the site's mean feature, which "
                                 "centres the head's inputs (0: none)", low=0, high=1_000, key="mean-releases",
                                 engine=FRONT_END, before=0)
    synthesis_steps: int = setting(100, "scatter: pixel-space steps fitting the images to the head (free "
                                   "post-processing)", low=1, high=100_000, key="synthesis-steps", engine=FRONT_END,
                                   before=300)
    synthesis_schedule: str = setting("cosine", "scatter: the synthesis' learning rate: cosine (from 0.1 to zero) "
                                      "or constant (0.05)", choices=tuple(SCHEDULES), key="synthesis-schedule",
                                      engine=FRONT_END, before="constant")
    class_pull: float = setting(0.0, "scatter: share of the synthesis steps that also pull each image towards its "
                                "label (0: the images only span the head; the soft labels carry the classes)",
                                low=0.0, high=1.0, key="class-pull", engine=FRONT_END, before=0.2)
    temperature: float = setting(4.0, "scatter: temperature of the released soft labels", low=0.0, high=MAX_TEMPERATURE,
                                 open_low=True, key="temperature", engine=FRONT_END,
                                 before=4.0)
    seed: int = setting(0, "public seed: initial images, network draws, augmentation", low=-(2**63),
                        high=2**63 - 1)
    checkpoint_every: int = setting(10, "iterations between checkpoints", low=1, flag=None, engine=PIXELS)
    classes_per_pass: int = setting(0, "classes released from one per-example pass (0: all on CUDA, one on CPU)",
                                    low=0, flag=None, engine=PIXELS)

    @property
    def releases(self) -> int:
        """Number of composed Poisson-subsampled Gaussian releases: T·K."""
        return self.iterations * self.inner_steps

    @property
    def private(self) -> bool:
        return not (math.isinf(self.epsilon) or self.noise_multiplier == 0.0)

    def resolved(self) -> DistillConfig:
        """This config with each AUTO setting replaced by its value at the target ε: what a run uses and its
        claim records."""
        chosen = {f.name: auto_value(f.name, self.epsilon) for f in fields(self)
                  if f.metadata["auto"] and getattr(self, f.name) == AUTO}
        return replace(self, **chosen) if chosen else self


REQUEST_KEYS = tuple(f.metadata["key"] for f in fields(DistillConfig) if f.metadata["key"])
# What a recorded run without a setting ran with (a bench row measured before the setting existed), by field
# name and by run-config key: each setting's `before`.
FIELDS_BEFORE = {f.name: f.metadata["before"] for f in fields(DistillConfig) if f.metadata["before"] is not MISSING}
KEYS_BEFORE = {f.metadata["key"]: f.metadata["before"] for f in fields(DistillConfig)
               if f.metadata["key"] and f.metadata["before"] is not MISSING}


def _in_range(value: float, meta: dict) -> bool:
    low, high = meta["low"], meta["high"]
    return not (math.isnan(value) or (low is not None and (value < low or (meta["open_low"] and value == low)))
                or (high is not None and (value > high or (meta["open_high"] and value == high))))


def check_settings(config: DistillConfig) -> None:
    """Every setting has its type and a value in its range, and the run can finish (bounded releases)."""
    for f in fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if value is None and f.default is None:
            continue
        if meta["auto"] and value == AUTO:
            continue
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise EngineError(f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}")
            continue
        if isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise EngineError(f"{f.name} must be true or false, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EngineError(f"{f.name} must be a number, got {type(value).__name__}")
        if isinstance(f.default, int) and not isinstance(value, int):
            raise EngineError(f"{f.name} must be an integer, got {value!r}")
        if not _in_range(value, meta) or (math.isinf(value) and f.name != "epsilon"):
            bounds = (f"{'(' if meta['open_low'] else '['}{meta['low']}, "
                      f"{meta['high']}{')' if meta['open_high'] else ']'}")
            finite = "" if meta["high"] == math.inf else "finite "
            raise EngineError(f"{f.name} must be a {finite}number in {bounds}, got {value!r}")
    if config.releases > MAX_RELEASES:
        raise EngineError(f"{config.iterations} iterations × {config.inner_steps} releases = "
                          f"{config.releases} releases, more than {MAX_RELEASES:,}: no run of that length finishes")


# ---- derived: the CLI, the run config, the app's defaults ----------------------------------------
def _flag(f) -> str | None:
    flag = f.metadata["flag"]
    return None if flag is None else flag or "--" + f.name.replace("_", "-")


def epsilon_value(text: str) -> float:
    """An ε from the command line: a number or 'inf' (never NaN)."""
    value = float(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError("must be a number or 'inf'")
    return value


def auto_or_number(text: str) -> float | str:
    """A setting from the command line that may be 'auto' (it follows --epsilon) or a number."""
    return AUTO if text == AUTO else epsilon_value(text)


def add_arguments(parser: argparse.ArgumentParser | Any, names: tuple[str, ...] | None = None) -> None:
    """`fedsynth distill`'s engine flags (or only those of `names`), with the engine's defaults and help."""
    for f in fields(DistillConfig):
        flag = _flag(f)
        if flag is None or (names is not None and f.name not in names):
            continue
        meta = f.metadata
        kind = type(f.default) if f.default is not None else float
        number = auto_or_number if meta["auto"] else epsilon_value
        extra = {"choices": meta["choices"]} if meta["choices"] else {"type": number if kind is float else kind}
        default = f"default {f.default:g}" if isinstance(f.default, float) else f"default {f.default}"
        parser.add_argument(flag, dest=f.name, default=f.default, help=f"{meta['help']} ({default})", **extra)


def from_arguments(args: argparse.Namespace, **fixed: Any) -> DistillConfig:
    """The config of parsed `add_arguments` flags; `fixed` sets fields the CLI does not expose. A flag the chosen
    engine never reads is refused, so that a run is not spent on settings that were silently ignored."""
    given = {f.name: getattr(args, f.name) for f in fields(DistillConfig) if hasattr(args, f.name)}
    config = DistillConfig(**{**given, **fixed})
    check_engine_settings(config, DistillConfig())
    return config


def check_engine_settings(config: DistillConfig, baseline: DistillConfig) -> None:
    """Refuse a setting changed from `baseline` that the chosen engine does not read."""
    engine = PIXELS if config.front_end == "none" else FRONT_END
    for f in fields(config):
        wanted = f.metadata["engine"]
        if wanted is not None and wanted != engine and getattr(config, f.name) != getattr(baseline, f.name):
            where = "--front-end none" if wanted == PIXELS else "a front end (--front-end scatter)"
            raise EngineError(f"{_flag(f) or f.name} applies only to {where}; with --front-end {config.front_end} "
                              "it would be ignored: drop it")


def app_default(f) -> Any:
    return f.default if f.metadata["app"] is MISSING else f.metadata["app"]


def app_defaults() -> dict[str, Any]:
    """The federated app's engine defaults by run-config key: what pyproject's [tool.flwr.app.config] must hold."""
    return {f.metadata["key"]: app_default(f) for f in fields(DistillConfig) if f.metadata["key"]}


def from_request(request: dict, **fixed: Any) -> DistillConfig:
    """The config a site runs for the server's request: each run-config key typed as its field (a key the
    request lacks takes the app's default); `fixed` sets what the site decides itself."""
    values = {}
    for f in fields(DistillConfig):
        key = f.metadata["key"]
        if key is None:
            continue
        raw = request.get(key, app_default(f))
        kind = type(f.default)
        if f.metadata["auto"] and raw == AUTO:
            values[f.name] = AUTO
            continue
        if kind is int and (isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw)
                            or raw != int(raw)):
            raise EngineError(f"the request's {key} must be an integer, got {str(raw)[:40]!r}")
        if kind is float and (isinstance(raw, bool) or not isinstance(raw, (int, float))):
            raise EngineError(f"the request's {key} must be a number, got {str(raw)[:40]!r}")
        values[f.name] = kind(raw)
    return DistillConfig(**{**values, **fixed})
