"""A simulated or deployed site's progress as a few log lines: which site, iteration of total, ε spent so far.

The federated main job runs sites without progress bars (their output is a log stream, not a
terminal); these lines are what `fedsynth simulate` shows while a site distils.
"""

from __future__ import annotations

import time
import warnings

from fedsynth.client.config import DistillConfig
from fedsynth.client.engine import head_mechanism, plan, releases_before_head
from fedsynth.common.data import ImageDataset
from fedsynth.common.privacy.accounting import Mechanism, epsilon_of_history


class SiteProgress:
    """`on_iteration` for `distill`: prints about `lines` lines over the run, and one at its end."""

    def __init__(self, site: str, dataset: ImageDataset, config: DistillConfig, lines: int = 4) -> None:
        self.site, self.config = site, config
        self.plan = plan(dataset, config)
        # pixels: outer iterations of K releases each; a front end: the class histogram's and the mean feature's
        # releases, then DP-SGD steps of one release each
        self.pixels = config.front_end == "none"
        self.before = 0 if self.pixels else releases_before_head(config)
        self.total = config.iterations if self.pixels else head_mechanism(self.plan.mechanism, config).steps
        self.unit, self.per = ("iteration", config.inner_steps) if self.pixels else ("DP-SGD step", 1)
        self.every = max(1, self.total // lines)
        self.started = time.monotonic()
        how = (f"{self.total} iterations" if self.pixels
               else f"{self.total} DP-SGD steps on the {config.front_end} front end")
        print(f"[fedsynth] {site}: distilling {len(dataset)} records into {config.ipc} images per class ({how})",
              flush=True)

    def synthesis(self, done: int) -> None:
        """`on_synthesis` for `distill` (a front end): the free image updates after the spend."""
        total = self.config.synthesis_steps
        if done % max(1, total // 2) == 0 or done == total:
            print(f"[fedsynth] {self.site}: synthesis step {done}/{total} (no further privacy cost), "
                  f"{time.monotonic() - self.started:.0f} s", flush=True)

    def __call__(self, done: int) -> None:
        if done % self.every and done != self.total:
            return
        m = self.plan.mechanism
        with warnings.catch_warnings():  # early on ε is tiny and Opacus asks for more RDP orders: harmless here
            warnings.simplefilter("ignore", UserWarning)
            spent = epsilon_of_history([Mechanism(m.noise_multiplier, m.sample_rate, self.before + done * self.per,
                                                  m.clip_norm)],
                                       self.plan.delta, self.plan.accountant)
        print(f"[fedsynth] {self.site}: {self.unit} {done}/{self.total}, ε spent {spent:.3g} of "
              f"{self.plan.epsilon:.3g}, {time.monotonic() - self.started:.0f} s", flush=True)
