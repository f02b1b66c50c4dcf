"""fedsynth beside what a user would otherwise run, on the same sites, partitions, (ε, δ) and test split.

Methods (rows of bench/results/compare.json):
  fedsynth       one round: each site distils under (ε, δ), the server trains on the pool
  distill-nodp   the same round without noise (ε = ∞)
  dp-fedavg      FedAvg with record-level DP-SGD (Opacus) at every site, σ calibrated so each site
                 ends its last round at the same (ε, δ)
  fedavg         FedAvg without DP
  central-dpsgd  one party holding all the data, DP-SGD at (ε, δ)
  central        one party holding all the data, no DP
Federated rows run on Flower's simulation engine (real SuperLink, one process per run); the
central rows in this process. Writes the JSON, `accuracy_vs_epsilon.png` and
`bytes_vs_accuracy.png`, prints the table and regenerates the README's block.

    .venv/bin/python bench/compare.py --epsilon 1 10 --methods fedsynth dp-fedavg   # a few rows
    .venv/bin/python bench/compare.py --epsilon 10 --methods dp-fedavg --seeds 0 1 --add-seeds  # one more seed
    .venv/bin/python bench/compare.py                                               # every row (hours on 2 cores)
    .venv/bin/python bench/compare.py --readme-only                                 # tables and plots from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import (SHARED_SEED_NOTE, app_run_config, merge_rows, percent, read_rows,  # noqa: E402
                              resolved_run_config, site_seeding, update_readme_block)

RESULTS = ROOT / "bench" / "results"
METHODS = ("fedsynth", "distill-nodp", "dp-fedavg", "fedavg", "central-dpsgd", "central")
PRIVATE = {"fedsynth", "dp-fedavg", "central-dpsgd"}
# PSG's published one-party Fashion-MNIST point (Dosser, ICCV 2025, IPC 10; ε = 1 as we read it).
PSG_PUBLISHED = [(1.0, 68.5)]
# Baseline training, the same for every ε (chosen once, not tuned per row): local DP-SGD in the usual regime.
FEDAVG = dict(rounds=10, local_epochs=1, batch_size=64, lr=0.05, clip_norm=1.0, width=32)
CENTRAL = dict(epochs=10, batch_size=256, lr=0.05, clip_norm=1.0, width=32)
# --smoke: the whole pipeline on the MNIST subset in minutes, to check the harness (numbers meaningless)
SMOKE = dict(dataset="mnist5k", fedsynth='steps=3 inner-steps=2 width=8 ipc=2 eval-epochs=5 eval-width=16',
             fedavg=dict(rounds=2, width=8), central=dict(epochs=1, width=8))
DATASET = {"name": "fashion-mnist", "extra": ""}
# the fixed front end the rows run on (--front-end): none (pixels) or scatter (ScatterNet features)
FRONT_END = {"name": "none"}
# central DP-SGD of a linear head on ScatterNet features (Tramèr & Boneh's setting as the engine runs it)
CENTRAL_HEAD = dict(epochs=20, batch_size=4096, lr=0.4, clip_norm=1.0, momentum=0.9, accountant="prv")


def _simulate(app: Path, sites: int, run_config: str) -> dict:
    from fedsynth.common.simulation import run_simulation

    with tempfile.TemporaryDirectory(prefix="fedsynth-compare-") as tmp:
        out = Path(tmp) / "out"
        config = (f'dataset="{DATASET["name"]}" {run_config} output-dir="{out}" keys-dir="{Path(tmp) / "keys"}" '
                  f'sites-dir="{Path(tmp) / "sites"}" anchors-file="{Path(tmp) / "anchors.json"}"')
        started = time.time()
        if run_simulation(app, sites, config) != 0:
            raise RuntimeError(f"simulated run failed: {config}")
        metrics = json.loads((out / "metrics.json").read_text())
        metrics["wall_seconds"] = time.time() - started
        return metrics


def run_fedsynth(sites: int, partition: str, alpha: float, epsilon: float, seed: int) -> dict:
    eps = "inf" if math.isinf(epsilon) else f"{epsilon}"
    m = _simulate(ROOT, sites, f'epsilon={eps} policy-epsilon={eps} site-budget={eps} partition="{partition}" '
                  f'alpha={alpha} seed={seed} expected-sites={sites} front-end="{FRONT_END["name"]}" '
                  f'{DATASET["extra"]}')
    accepted = [s for s in m["sites"] if s["accepted"]]
    return {"method": "fedsynth" if math.isfinite(epsilon) else "distill-nodp", "accuracy_mean": m["accuracy"],
            "rounds": 1, "bytes_total": sum(s["upload_bytes"] for s in accepted), "seconds": m["wall_seconds"],
            "peak_rss_mb": max(s.get("peak_rss_mb", 0.0) for s in accepted),
            "max_site_epsilon": m.get("max_site_epsilon"), "sites_accepted": len(accepted),
            "site_seeding": site_seeding(m["sites"]), "aggregation": m.get("aggregation"),
            **({"rule_accuracies": _rule_accuracies(m)} if m.get("aggregation") else {}),
            "site_seconds": statistics.fmean(float(s["seconds"]) for s in accepted) if accepted else None,
            **_pool_choice(m)}


def _rule_accuracies(metrics: dict) -> dict:
    """A front-end round's accuracy under every rule its server scored the pool with: the one it ran and the
    others it recorded beside it (metrics.json's `<rule>_accuracy`)."""
    from fedsynth.server.front_end_model import AGGREGATIONS

    return {**{rule: metrics[f"{rule}_accuracy"] for rule in AGGREGATIONS if f"{rule}_accuracy" in metrics},
            metrics["aggregation"]: metrics["accuracy"]}


def _pool_choice(metrics: dict) -> dict:
    """The weighting the server chose for the pool and the median run SNR it chose by, from a round's metrics.json
    or a federation-bench row (absent in older rounds)."""
    return {"pool_weighting": metrics.get("pool_weighting", "uniform"), "pool_run_snr": metrics.get("pool_run_snr")}


# Engine settings a federation-bench row must share with the current defaults to stand in for a fedsynth run.
ENGINE_KEYS = ("dataset", "delta", "ipc", "steps", "inner-steps", "batch-per-class", "width", "lr-images",
               "replay-epochs", "replay-lr-end", "eval-epochs", "eval-width", "pool-weighting", "release-layers",
               "front-end", "head-epochs", "head-batch", "head-lr", "synthesis-steps", "synthesis-schedule",
               "class-pull", "temperature", "accountant", "mean-releases")
def engine_settings(epsilon: float) -> dict:
    """The engine settings a fedsynth row at target ε ran with (the app's defaults in pyproject.toml, 'auto' ones
    at their value for ε), so a row says what it measured."""
    defaults = {**resolved_run_config(epsilon), "front-end": FRONT_END["name"]}
    return {"source": "pyproject [tool.flwr.app.config]", **{k: defaults[k] for k in ENGINE_KEYS}}


def from_federation_bench(sites: int, partition: str, alpha: float, epsilon: float, seed: int) -> dict | None:
    """The same round already measured by bench/federation.py (same sites, partition, ε, seed and engine
    settings as today's defaults), as a compare row; None when there is none. Saves a ~30-minute rerun."""
    if math.isinf(epsilon) or DATASET["extra"]:
        return None
    defaults = {**resolved_run_config(epsilon), "front-end": FRONT_END["name"]}
    for row in read_rows(RESULTS / "federation.json"):
        config = row["config"]
        if (row["sites"] == sites and row["partition"] == partition and row["epsilon"] == epsilon
                and row["seed"] == seed and (partition != "dirichlet" or row["alpha"] == alpha)
                and row["dataset"] == DATASET["name"] and row.get("site_seeding") == "per-site"
                and all(_ran_with(config, k) == defaults[k] for k in ENGINE_KEYS)
                and (FRONT_END["name"] == "none" or _aggregation_of(row) == _today_aggregation())):
            return {"method": "fedsynth", "accuracy_mean": row["accuracy_mean"], "rounds": 1,
                    "bytes_total": row["bytes_total"], "seconds": row["seconds"], "peak_rss_mb": row["peak_rss_mb"],
                    "max_site_epsilon": row["max_site_epsilon"], "sites_accepted": row["sites_accepted"],
                    "site_seeding": row["site_seeding"],
                    **_pool_choice(row),
                    "source": f"bench/federation.py ({row['outputs']})"}
    return None


def run_fedavg(sites: int, partition: str, alpha: float, epsilon: float, seed: int) -> dict:
    from fedsynth.common.simulation import write_app_variant
    from fedsynth.server.fedavg_server_app import BASELINE_COMPONENTS, BASELINE_CONFIG

    with tempfile.TemporaryDirectory(prefix="fedsynth-fedavg-app-") as tmp:
        app = write_app_variant(Path(tmp), extra_config=BASELINE_CONFIG, **BASELINE_COMPONENTS)
        f = FEDAVG
        m = _simulate(app, sites, f'epsilon={0.0 if math.isinf(epsilon) else epsilon} partition="{partition}" '
                      f'alpha={alpha} seed={seed} expected-sites={sites} rounds={f["rounds"]} '
                      f'local-epochs={f["local_epochs"]} batch-size={f["batch_size"]} lr={f["lr"]} '
                      f'clip-norm={f["clip_norm"]} width={f["width"]}')
    return {"method": m["method"], "accuracy_mean": m["accuracy"], "accuracy_per_round": m["accuracy_per_round"],
            "rounds": m["rounds"], "bytes_total": m["bytes_total"], "seconds": m["wall_seconds"],
            "peak_rss_mb": m["peak_rss_mb"], "max_site_epsilon": m["max_site_epsilon"], "sites_accepted": sites}


def run_central_head(epsilon: float, seed: int) -> dict:
    """One party with all the training data: DP-SGD of a linear head on the front end's features (Tramèr & Boneh)."""
    from fedsynth.client.head_training import train_head
    from fedsynth.common.data import load_dataset
    from fedsynth.common.evaluation import accuracy
    from fedsynth.common.front_end import build_front_end
    from fedsynth.common.front_end.fit import FrontEndClassifier
    from fedsynth.common.privacy.accounting import Mechanism, calibrate_noise_multiplier, epsilon_of_history

    c = CENTRAL_HEAD
    train, test = load_dataset(DATASET["name"], train=True), load_dataset(DATASET["name"], train=False)
    started = time.time()
    front_end = build_front_end(FRONT_END["name"], train.image_shape).eval()
    features = front_end.features(train.images)
    q = min(1.0, c["batch_size"] / len(train))
    steps = math.ceil(c["epochs"] / q)
    sigma = 0.0 if math.isinf(epsilon) else calibrate_noise_multiplier(epsilon, 1e-5, q, steps, c["accountant"])
    mechanism = Mechanism(sigma, q, steps, c["clip_norm"])
    head = train_head(features, train.labels, train.num_classes, mechanism, lr=c["lr"], momentum=c["momentum"],
                      secret=seed, progress=True)
    spent = epsilon_of_history([mechanism], 1e-5, c["accountant"])
    return {"method": "central" if math.isinf(epsilon) else "central-dpsgd",
            "accuracy_mean": accuracy(FrontEndClassifier(front_end, head), test), "rounds": 0, "bytes_total": 0,
            "seconds": time.time() - started, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "max_site_epsilon": None if math.isinf(spent) else spent, "sites_accepted": 1}


def run_central(epsilon: float, seed: int) -> dict:
    """One party with all the training data: DP-SGD at (ε, 1e-5), or plain SGD for ε = ∞."""
    if FRONT_END["name"] != "none":
        return run_central_head(epsilon, seed)
    from fedsynth.client.local_training import plan_dp_sgd, train_locally
    from fedsynth.common.data import load_dataset
    from fedsynth.common.evaluation import accuracy
    from fedsynth.common.models import ConvNet

    c = CENTRAL
    train, test = load_dataset(DATASET["name"], train=True), load_dataset(DATASET["name"], train=False)
    plan = plan_dp_sgd(len(train), c["batch_size"], c["epochs"], 1, epsilon, 1e-5, c["clip_norm"])
    started = time.time()
    model, _, spent = train_locally(ConvNet(1, 10, 28, c["width"], norm="groupnorm"), train, plan, c["batch_size"],
                                    c["epochs"], c["lr"], seed, progress=True)
    return {"method": "central" if math.isinf(epsilon) else "central-dpsgd", "accuracy_mean": accuracy(model, test),
            "rounds": 0, "bytes_total": 0, "seconds": time.time() - started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "max_site_epsilon": None if math.isinf(spent) else spent, "sites_accepted": 1}


def run_row(method: str, sites: int, partition: str, alpha: float, epsilon: float, seeds: list[int],
            reuse_federation: bool = True, earlier: dict | None = None) -> dict:
    """Every seed of one method at one (partition, ε); accuracy as mean ± std over the seeds.

    With `earlier` (this row as measured before), its seeds are kept as they were and only the
    others run: adding a seed costs one run, not a re-run of all of them.
    """
    from fedsynth.common.versions import library_versions

    if earlier and method in ("fedsynth", "distill-nodp") and earlier.get("site_seeding") != "per-site":
        raise SystemExit(f"{method} at ε={epsilon}: the row's seeds ran with one seed shared by all sites, "
                         "today's sites seed their own runs; measure the row afresh (without --add-seeds)")
    kept = dict(zip(earlier["seeds"], earlier["accuracies"])) if earlier else {}
    to_run = [s for s in seeds if s not in kept]
    runs = []
    for seed in to_run:
        if method in ("fedsynth", "distill-nodp"):
            measured = from_federation_bench(sites, partition, alpha, epsilon, seed) if reuse_federation else None
            runs.append(measured or run_fedsynth(sites, partition, alpha, epsilon, seed))
        elif method in ("dp-fedavg", "fedavg"):
            runs.append(run_fedavg(sites, partition, alpha, epsilon, seed))
        else:
            runs.append(run_central(epsilon, seed))
    if not runs:
        return earlier
    scores = {**kept, **{seed: r["accuracy_mean"] for seed, r in zip(to_run, runs)}}
    all_seeds = sorted(scores)
    accuracies = [scores[s] for s in all_seeds]
    # the earlier row keeps only its mean time and its peak: weight them by its seeds
    seconds = [r["seconds"] for r in runs] + ([earlier["seconds"]] * len(kept) if kept else [])
    peak = max([r["peak_rss_mb"] for r in runs] + ([earlier["peak_rss_mb"]] if kept else []))
    # a site's own time, from its reply (fedsynth rows), mean over the seeds that recorded it
    site_seconds = [r["site_seconds"] for r in runs if r.get("site_seconds") is not None] + (
        [earlier["site_seconds"]] * len(kept) if kept and earlier.get("site_seconds") is not None else [])
    central = method.startswith("central")
    # per seed, the pool weighting the server chose and the run SNR it chose by (fedsynth rows)
    chosen = {**(earlier or {}).get("pool_weighting_by_seed", {}),
              **{str(seed): [r["pool_weighting"], r["pool_run_snr"]] for seed, r in zip(to_run, runs)
                 if "pool_weighting" in r}}
    # per seed, what every rule the server scores reached on that seed's pool (front-end fedsynth rows)
    rules = {**(earlier or {}).get("rule_accuracies_by_seed", {}),
             **{str(seed): r["rule_accuracies"] for seed, r in zip(to_run, runs) if "rule_accuracies" in r}}
    last = {k: v for k, v in runs[-1].items() if k not in ("pool_weighting", "pool_run_snr", "rule_accuracies")}
    return {**last, **({"pool_weighting_by_seed": chosen} if chosen else {}),
            **({"rule_accuracies_by_seed": rules} if rules else {}),
            "method": method, "epsilon": None if math.isinf(epsilon) else epsilon, "delta": 1e-5,
            "partition": "central" if central else partition, "alpha": alpha if partition == "dirichlet" else None,
            "sites": 1 if central else sites, "accuracy_mean": statistics.fmean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None, "accuracies": accuracies,
            "seconds": statistics.fmean(seconds), "seeds": all_seeds, "peak_rss_mb": peak,
            "site_seconds": statistics.fmean(site_seconds) if site_seconds else None,
            "bytes_per_site": runs[-1]["bytes_total"] / (1 if central else sites),
            "front_end": FRONT_END["name"],
            "settings": ((CENTRAL_HEAD if FRONT_END["name"] != "none" else CENTRAL) if central
                         else FEDAVG if "fedavg" in method else engine_settings(epsilon)),
            "versions": library_versions()}


def _key(row: dict) -> tuple:
    return (METHODS.index(row["method"]), row.get("front_end", "none"), row["partition"], row["epsilon"] is None,
            row["epsilon"] or 0.0)


def merge(rows: list[dict], path: Path) -> list[dict]:
    return merge_rows(path, "compare", rows, _key)


def _shared_seed(row: dict) -> bool:
    """A fedsynth round measured when every site distilled from the same public seed (rows then had no mark)."""
    return row["method"] in ("fedsynth", "distill-nodp") and row.get("site_seeding", "shared") == "shared"


OLDER_MARKS = "²³⁴⁵⁶⁷⁸⁹"
def _today_aggregation() -> str:
    """How a front-end round's server joins the sites today: the app's `aggregation`."""
    return str(app_run_config()["aggregation"])


def _aggregation_of(row: dict) -> str:
    """The server's rule a front-end row ran with (rows before the `aggregation` key name consensus so)."""
    return {"pairwise-consensus": "consensus", None: "union"}.get(row.get("aggregation"), row.get("aggregation"))


def _ran_with(config: dict, key: str):
    """The value a recorded engine config ran with for `key` (keys added since: the value rows had before them,
    each engine setting's `before`, and a uniform pool before the server chose its weighting)."""
    from fedsynth.client.config import KEYS_BEFORE

    return config.get(key, {**KEYS_BEFORE, "pool-weighting": "uniform"}.get(key))


def _keys_read_by(front_end: str) -> set[str]:
    """The ENGINE_KEYS a round on `front_end` reads: a pixel row is not footnoted for a head setting, nor the
    reverse (each engine setting's metadata names its engine)."""
    from dataclasses import fields

    from fedsynth.client.config import FRONT_END as HEAD, PIXELS, DistillConfig

    engine = PIXELS if front_end == "none" else HEAD
    other = {f.metadata["key"] for f in fields(DistillConfig)
             if f.metadata["key"] and f.metadata["engine"] not in (None, engine)}
    return set(ENGINE_KEYS) - other


def _older_settings(rows: list[dict]) -> tuple[dict[int, str], list[str]]:
    """Footnote marks (²³…, by row id) for fedsynth rows run under engine settings other than the app's today,
    one per distinct set of old settings, and the footnotes saying what those rows ran with."""
    older: dict[tuple, str] = {}
    at: dict[tuple, float] = {}  # the ε of a footnote's first row: today's value of an 'auto' setting is ε's
    marks: dict[int, str] = {}
    for r in rows:
        if r["method"] not in ("fedsynth", "distill-nodp") or "settings" not in r:
            continue
        epsilon = math.inf if r["epsilon"] is None else r["epsilon"]
        today = {**engine_settings(epsilon), "front-end": _ran_with(r["settings"], "front-end")}
        read = _keys_read_by(_ran_with(r["settings"], "front-end"))
        then = tuple((k, _ran_with(r["settings"], k)) for k in ENGINE_KEYS
                     if k in read and _ran_with(r["settings"], k) != today[k])
        if r.get("front_end", "none") != "none" and _aggregation_of(r) != _today_aggregation():
            then += (("aggregation", _aggregation_of(r)),)  # the server's rule for front-end rounds
        if then and (then in older or len(older) < len(OLDER_MARKS)):
            marks[id(r)] = older.setdefault(then, OLDER_MARKS[len(older)])
            at.setdefault(then, epsilon)
    today = {then: {**engine_settings(at[then]), "aggregation": _today_aggregation()} for then in older}
    notes = [f"\n{mark} measured with the app's earlier engine settings: {', '.join(f'{k}={v}' for k, v in then)} "
             f"(today's: {', '.join(f'{k}={today[then][k]}' for k, _ in then)})."
             for then, mark in older.items()]
    return marks, notes


def _marks(row: dict, older: dict[int, str]) -> str:
    """Footnote marks: ¹ shared seed; ², ³, … the row's older engine settings (see `_older_settings`)."""
    return (" ¹" if _shared_seed(row) else "") + (f" {older[id(row)]}" if id(row) in older else "")


def _site_time(row: dict) -> str:
    """A site's mean time in the row's rounds, from the sites' replies (rows measured before it was kept: —)."""
    return "—" if row.get("site_seconds") is None else f"{row['site_seconds'] / 60:.1f} min"


def table(rows: list[dict]) -> str:
    lines = ["| method | front end | partition | ε | accuracy % | rounds | bytes per site | bytes total | wall time "
             "| a site's time | peak RSS |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    older, notes = _older_settings(rows)
    for r in rows:
        eps = "no DP" if r["epsilon"] is None else f"{r['epsilon']:g}"
        acc = percent(r["accuracy_mean"], r["accuracy_std"])
        method = r["method"] + _marks(r, older)
        lines.append(f"| {method} | {r.get('front_end', 'none')} | {r['partition']} | {eps} | {acc} | {r['rounds']} "
                     "| "
                     f"{r['bytes_per_site'] / 2**20:.2f} MiB | {r['bytes_total'] / 2**20:.1f} MiB | "
                     f"{r['seconds'] / 60:.1f} min | {_site_time(r)} | {r['peak_rss_mb']:.0f} MB |")
    if any(_shared_seed(r) for r in rows):
        lines.append(SHARED_SEED_NOTE)
    lines += notes
    return "\n".join(lines)


def _score(row: dict) -> str:
    """Mean ± std in %, with the number of seeds behind it."""
    return f"{percent(row['accuracy_mean'], row['accuracy_std'])} ({len(row['seeds'])})"


def versus(rows: list[dict]) -> str:
    """fedsynth against DP-FedAvg on the same front end at each (partition, ε) both were measured at: the issue's
    two targets, accuracy and bytes, computed from the JSON so the README's reading of them cannot go stale.
    Pixel rows meet the ConvNet DP-FedAvg of this benchmark; ScatterNet rows the tuned linear-head peer."""
    lines = ["| fedsynth front end | partition | ε | fedsynth % (seeds) | DP-FedAvg peer | DP-FedAvg % (seeds) "
             "| fedsynth − DP-FedAvg | fedsynth's bytes |", "|---|---|---|---|---|---|---|---|"]
    older, _ = _older_settings(rows)
    tuned = _tuned_fedavg()
    for mine in (r for r in rows if r["method"] == "fedsynth"):
        if mine.get("front_end", "none") == "scatter":
            r = tuned.get(mine["epsilon"]) if mine["partition"] == "dirichlet" else None
            centred = f", centred by {r['mean_releases']} releases" if r is not None and r["mean_releases"] else ""
            peer = None if r is None else f"ScatterNet head, tuned ({r['rounds']} rounds, lr {r['lr']:g}{centred})"
        else:
            r = next((f for f in rows if f["method"] == "dp-fedavg" and f["partition"] == mine["partition"]
                      and f["epsilon"] == mine["epsilon"]), None)
            peer = f"ConvNet, {FEDAVG['rounds']} rounds"
        if r is None:
            continue
        gap = f"{100 * (mine['accuracy_mean'] - r['accuracy_mean']):+.1f}".replace("-", "−")
        lines.append(f"| {mine.get('front_end', 'none')} | {mine['partition']} | {mine['epsilon']:g} "
                     f"| {_score(mine)}{_marks(mine, older)} | {peer} | {_score(r)} | {gap} points | "
                     f"1/{r['bytes_total'] / mine['bytes_total']:.0f} of DP-FedAvg's |")
    return "\n".join(lines)


def plots(rows: list[dict], folder: Path) -> None:
    """Accuracy against ε per private method (methods without DP as dashed levels), and bytes sent vs accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    for method in METHODS:
        for partition in sorted({r["partition"] for r in rows if r["method"] == method}):
            mine = [r for r in rows if r["method"] == method and r["partition"] == partition]
            label = f"{method} ({partition})"
            if method in PRIVATE:
                xs, ys, errs = zip(*sorted((r["epsilon"], 100 * r["accuracy_mean"], 100 * (r["accuracy_std"] or 0.0))
                                           for r in mine if r["epsilon"] is not None))
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label, color=f"C{METHODS.index(method)}")
            else:  # no DP: a level line to read the cost of privacy against
                ax.axhline(100 * mine[0]["accuracy_mean"], linestyle="--", linewidth=1, label=label + ", no DP",
                           color=f"C{METHODS.index(method)}")
    ax.scatter(*zip(*PSG_PUBLISHED), marker="*", s=120, color="k", zorder=5, label="PSG published (one party)")
    ax.set_xscale("log")
    ticks = sorted({r["epsilon"] for r in rows if r["epsilon"] is not None} | {e for e, _ in PSG_PUBLISHED})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ε per site (δ = 1e-5), log scale; bars: std over seeds; dashed: without DP")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Fashion-MNIST: accuracy vs privacy")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, off the lines
    fig.tight_layout()
    fig.savefig(folder / "accuracy_vs_epsilon.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in METHODS:
        pts = [(r["bytes_total"] / 2**20, 100 * r["accuracy_mean"]) for r in rows if r["method"] == method]
        if pts and all(b > 0 for b, _ in pts):
            ax.scatter(*zip(*pts), label=method)
            for (b, a), r in zip(pts, [r for r in rows if r["method"] == method]):
                ax.annotate("no DP" if r["epsilon"] is None else f"ε={r['epsilon']:g}", (b, a), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        elif pts:  # one party with all the data sends nothing: a reference level, not a point on a log axis
            ax.axhline(max(a for _, a in pts), linestyle=":", color="grey", label=f"{method} (sends nothing)")
    ax.set_xscale("log")
    ax.set_xlabel("bytes sent by all sites, MiB (log)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("what each method sends for its accuracy")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(folder / "bytes_vs_accuracy.png", dpi=120)
    plt.close(fig)


HEADLINE_METHODS = {("fedsynth", "scatter"): "fedsynth, ScatterNet front end (one round, 10 sites)",
                    ("fedsynth", "none"): "fedsynth, pixels (one round, 10 sites)",
                    ("dp-fedavg", "none"): "DP-FedAvg, ConvNet (10 rounds, 10 sites)",
                    ("central-dpsgd", "scatter"): "DP-SGD on ScatterNet features, one party holding all data",
                    ("central-dpsgd", "none"): "DP-SGD, ConvNet, one party holding all data"}


def _tuned_fedavg() -> dict[float, dict]:
    """The tuned DP-FedAvg peer on the ScatterNet front end, per ε (`bench/fedavg_sweep.py`'s `tuned`)."""
    from bench.fedavg_sweep import tuned

    return tuned(read_rows(RESULTS / "fedavg_sweep.json"))


def _tuned_fedavg_line() -> list[str]:
    """The headline's DP-FedAvg on the ScatterNet front end: per ε, the setting best on seed 0 of
    `bench/fedavg_sweep.py` (tuned on the test split: in the peer's favour), over the seeds run at it."""
    peer = _tuned_fedavg()
    if not peer:
        return []
    cells = ["—" if e not in peer else
             f"{percent(peer[e]['accuracy_mean'], peer[e]['accuracy_std'])} % ({peer[e]['rounds']} rounds"
             + (", centred" if peer[e]["mean_releases"] else "")
             + (f", partition seed {peer[e]['seeds'][0]} only" if len(peer[e]["seeds"]) == 1 else "") + ")"
             for e in (1.0, 10.0)]
    sent = " / ".join(dict.fromkeys(f"{peer[e]['bytes_total'] / 2**20:.0f}" for e in (1.0, 10.0) if e in peer)) + " MiB"
    tried = max(p["settings_tried"] for p in peer.values())
    return [f"| DP-FedAvg, ScatterNet linear head (tuned: best of {tried} settings, 10 sites) | {' | '.join(cells)} "
            f"| {sent} |"]


def headline(rows: list[dict]) -> str:
    """The README's table: fedsynth beside the strongest peers measured in the same harness, at ε = 1 and 10."""
    older, notes = _older_settings(rows)
    lines = ["| method | ε = 1 | ε = 10 | bytes sent (all sites) |", "|---|---|---|---|"]
    for (method, front_end), name in HEADLINE_METHODS.items():
        cells, sent = [], "nothing (no federation)"
        mine = [r for r in rows if r["method"] == method and r.get("front_end", "none") == front_end]
        if not mine:
            continue
        for epsilon in (1.0, 10.0):
            row = next((r for r in mine if r["epsilon"] == epsilon), None)
            cells.append("—" if row is None else f"{percent(row['accuracy_mean'], row['accuracy_std'])} %"
                         + (_marks(row, older) if method == "fedsynth" else ""))
            if row is not None and row["bytes_total"]:
                sent = f"{row['bytes_total'] / 2**20:.1f} MiB"
        lines.append(f"| {name} | {' | '.join(cells)} | {sent} |")
        if (method, front_end) == ("dp-fedavg", "none"):
            lines += _tuned_fedavg_line()
    used = {mark.strip() for r in rows if r["method"] == "fedsynth" for mark in _marks(r, older).split()}
    return "\n".join(lines + [n for n in notes if n.strip()[:1] in used])


def update_readme(rows: list[dict]) -> None:
    pictures = "![accuracy vs ε](results/accuracy_vs_epsilon.png) ![bytes vs accuracy](results/bytes_vs_accuracy.png)"
    update_readme_block("compare", f"{table(rows)}\n\nThe issue's targets, fedsynth against DP-FedAvg:\n\n"
                                   f"{versus(rows)}\n\n{pictures}")
    update_readme_block("headline", headline(rows), readme=ROOT / "README.md",
                        source="_Generated by `bench/compare.py` from `bench/results/compare.json` "
                               "(Fashion-MNIST, 10 Dirichlet(0.5) sites, δ = 1e-5, mean ± std over seeds)._")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    parser.add_argument("--epsilon", type=float, nargs="*", default=[0.5, 1.0, 2.0, 5.0, 10.0],
                        help="ε for the private methods (the others run once, without DP)")
    parser.add_argument("--partition", nargs="*", choices=("iid", "dirichlet"), default=["dirichlet"])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--front-end", choices=("none", "scatter"), default="none",
                        help="the fixed front end of the fedsynth and central rows (DP-FedAvg runs on pixels)")
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "compare.json")
    parser.add_argument("--readme-only", action="store_true", help="only regenerate tables and plots from the JSON")
    parser.add_argument("--add-seeds", action="store_true",
                        help="keep each row's measured seeds and run only the --seeds it lacks")
    parser.add_argument("--rerun-fedsynth", action="store_true",
                        help="run fedsynth rows even when bench/federation.py already measured the same round")
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the MNIST subset (give --out elsewhere)")
    args = parser.parse_args()
    if args.smoke:
        if args.out == RESULTS / "compare.json":
            parser.error("--smoke results are meaningless: give --out outside bench/results")
        DATASET.update(name=SMOKE["dataset"], extra=SMOKE["fedsynth"])
        FEDAVG.update(SMOKE["fedavg"])
        CENTRAL.update(SMOKE["central"])

    FRONT_END["name"] = args.front_end
    rows = read_rows(args.out)
    if not args.readme_only:
        for method in args.methods:
            epsilons = args.epsilon if method in PRIVATE else [math.inf]
            partitions = ["central"] if method.startswith("central") else args.partition
            for partition in partitions:
                for epsilon in epsilons:
                    probe = {"method": method, "partition": partition, "front_end": args.front_end,
                             "epsilon": None if math.isinf(epsilon) else epsilon}
                    earlier = next((r for r in rows if _key(r) == _key(probe)), None) if args.add_seeds else None
                    row = run_row(method, args.sites, partition, args.alpha, epsilon, args.seeds,
                                  reuse_federation=not args.rerun_fedsynth, earlier=earlier)
                    rows = merge([row], args.out)
                    print(table(rows), flush=True)
    if rows:
        plots(rows, args.out.parent)
        print(table(rows))
        print(versus(rows))
        if not args.smoke:
            update_readme(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
