"""What the benchmarks share: merge rows into a JSON file, format scores, regenerate a results block, read the
app's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def merge_rows(path: Path, benchmark: str, rows: list[dict], key: Callable[[dict], Any],
               order: Callable[[dict], Any] | None = None) -> list[dict]:
    """Replace the file's rows that have the same `key`, keep the others, write strict JSON; return all rows."""
    from fedsynth.common.synthetic_set import write_json

    existing = json.loads(path.read_text())["rows"] if path.exists() else []
    keyed = {key(r): r for r in existing}
    keyed.update({key(r): r for r in rows})
    merged = sorted(keyed.values(), key=order or key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"benchmark": benchmark, "rows": merged})
    return merged


SHARED_SEED_NOTE = ("\n¹ measured before each site seeded its own run (all sites shared one public seed, "
                    "so their initial images and network draws were the same).")


def site_seeding(sites: list[dict]) -> str:
    """How a federated round's accepted sites seeded their runs: "per-site" (each its own public seed, from
    the round's seed and its name) or "shared" (one seed for all: rounds measured before that change)."""
    seeds = [s.get("seed") for s in sites if s.get("accepted")]
    return "per-site" if seeds and None not in seeds and len(set(seeds)) == len(seeds) else "shared"


def add_federation_arguments(parser) -> None:
    """The in-process federation benches' shared flags: the ε values, and the Dirichlet federation (sites, α, seed)."""
    parser.add_argument("--epsilon", type=float, nargs="*", default=[1.0, 10.0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)


def add_share_arguments(parser, out: Path, device_help: str) -> None:
    """Flags of an in-process bench whose grid can be split into shares run elsewhere (one process each, on a
    GPU say) and merged back: --device, --out (its own rows file) and --merge (the shares into `out`)."""
    parser.add_argument("--device", default="cpu", help=device_help)
    parser.add_argument("--out", type=Path, default=out,
                        help="rows file; another than the default leaves the RESULTS table alone (for --merge)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="only merge these rows files (shares run elsewhere) into the default one")


def merge_files(path: Path, benchmark: str, parts: list[Path], key: Callable[[dict], Any]) -> list[dict]:
    """Merge the rows of `parts` (shares of a benchmark run elsewhere, each with its own `--out`) into `path`."""
    return merge_rows(path, benchmark, [row for part in parts for row in read_rows(part)], key)


def percent(mean: float, std: float | None = None) -> str:
    """An accuracy (fraction) as "71.0 ± 0.4" in %; the spread left off where there is none (one seed)."""
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def app_run_config() -> dict[str, Any]:
    """The app's default run config, `[tool.flwr.app.config]` in pyproject.toml: what a simulated round sends."""
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def resolved_run_config(epsilon: float) -> dict[str, Any]:
    """The app's run config with each 'auto' engine setting at its value for target ε: what its sites run (the
    sites' own rule, `DistillConfig.resolved`)."""
    from dataclasses import fields

    from fedsynth.client.config import AUTO, DistillConfig, from_request

    config = app_run_config()
    resolved = from_request({**config, "epsilon": epsilon}).resolved()
    for f in fields(DistillConfig):
        if f.metadata["auto"] and config.get(f.metadata["key"]) == AUTO:
            config[f.metadata["key"]] = getattr(resolved, f.name)
    return config


def app_head_settings(epsilon: float) -> dict[str, Any]:
    """The DP-SGD settings of the app's site heads at target ε, as DistillConfig fields."""
    app = resolved_run_config(epsilon)
    return {"head_batch": float(app["head-batch"]), "head_lr": float(app["head-lr"]),
            "head_epochs": float(app["head-epochs"]), "accountant": app["accountant"],
            "mean_releases": int(app["mean-releases"])}


def field_ran_with(config: dict, name: str) -> Any:
    """The DistillConfig field `name` a bench row's config ran with (rows measured before the setting existed:
    its `before` value)."""
    from fedsynth.client.config import FIELDS_BEFORE

    return config.get(name, FIELDS_BEFORE[name])


def read_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


RESULTS = ROOT / "bench" / "RESULTS.md"


def update_readme_block(name: str, body: str, readme: Path = RESULTS, source: str | None = None) -> None:
    """Replace what lies between `<!-- NAME-results:start -->` and `:end -->` in `readme` (bench/RESULTS.md;
    the README's headline block names README.md) with `body`; nothing happens where the markers are absent."""
    start, end = f"<!-- {name}-results:start -->", f"<!-- {name}-results:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    source = source or f"_Generated by `bench/{name}.py` from `bench/results/{name}.json`._"
    readme.write_text(f"{head}{start}\n{source}\n\n{body}\n{end}{tail}")


def score_set(synthetic, front_end: str, test, seeds: int, epochs: int, device: Any = "cpu") -> dict:
    """A released set's test accuracy as the server scores one site's set: a pixel set trains `seeds` ConvNets on
    its hard labels for `epochs`; a front-end set fits the ridge head to its soft labels on that front end. The
    result's `train_config` says which."""
    from fedsynth.common.evaluation import TrainConfig, evaluate_on_front_end, evaluate_synthetic

    if front_end == "none":
        return evaluate_synthetic(synthetic.images, synthetic.labels, test, seeds, TrainConfig(epochs=epochs), device)
    return evaluate_on_front_end(synthetic.images, synthetic.labels, test, front_end, synthetic.soft_labels)
