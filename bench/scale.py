"""Scale benchmark: one simulated round with 10, 30 and 100 sites on this machine.

The round is the real one (private SuperLink, Flower's simulation engine, every site
distilling its Fashion-MNIST share, the server checking and pooling); the per-site engine
work is kept small (`--run-config`) so the table shows how the system grows with the
number of sites, not how long distillation takes. Peak memory is the largest total RSS of
every process the run started (SuperLink, simulation runtime, Ray workers), sampled each
second. Writes bench/results/scale.json with the growth per added site.

    .venv/bin/python bench/scale.py                         # 10, 30, 100 sites
    .venv/bin/python bench/scale.py --sites 10 30 --federation-config "client-resources-num-cpus=1"
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
LIGHT = "steps=2 inner-steps=2 eval-epochs=20"  # small engine work per site: the system's cost is what grows


class PeakTreeMemory:
    """Largest summed RSS of this process's descendants, sampled every `period` seconds in a thread."""

    def __init__(self, period: float = 1.0) -> None:
        self.period, self.peak_mb, self._stop = period, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.period)

    def __enter__(self) -> "PeakTreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_row(sites: int, run_config: str, federation_config: str | None) -> dict:
    from fedsynth.common.simulation import run_simulation
    from fedsynth.common.versions import library_versions

    with tempfile.TemporaryDirectory(prefix="fedsynth-scale-") as tmp:
        out = Path(tmp) / "out"
        config = (f'{run_config} expected-sites={sites} min-sites={min(2, sites)} output-dir="{out}" '
                  f'keys-dir="{Path(tmp) / "keys"}" sites-dir="{Path(tmp) / "sites"}" '
                  f'anchors-file="{Path(tmp) / "anchors.json"}"')
        started = time.time()
        with PeakTreeMemory() as memory:
            code = run_simulation(ROOT, sites, config, federation_config=federation_config)
        seconds = time.time() - started
        if code != 0:
            raise RuntimeError(f"the {sites}-site round failed (exit {code})")
        metrics = json.loads((out / "metrics.json").read_text())
    return {"sites": sites, "sites_accepted": metrics["sites_accepted"], "seconds": seconds,
            "seconds_per_site": seconds / sites, "peak_rss_mb": memory.peak_mb, "accuracy": metrics["accuracy"],
            "run_config": config.split(" output-dir")[0], "federation_config": federation_config,
            "versions": library_versions()}


def table(rows: list[dict]) -> str:
    lines = ["| sites | wall time | per site | peak RSS (all processes) | accepted |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sites']} | {r['seconds'] / 60:.1f} min | {r['seconds_per_site']:.1f} s | "
                     f"{r['peak_rss_mb']:.0f} MB | {r['sites_accepted']} |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        lines.append(f"\nFrom {a['sites']} to {b['sites']} sites: "
                     f"{(b['seconds'] - a['seconds']) / (b['sites'] - a['sites']):+.1f} s and "
                     f"{(b['peak_rss_mb'] - a['peak_rss_mb']) / (b['sites'] - a['sites']):+.1f} MB per added site.")
    return "\n".join(lines)


def main() -> int:
    from fedsynth.common.synthetic_set import write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="*", default=[10, 30, 100])
    parser.add_argument("--run-config", default=LIGHT, help="engine settings for every site")
    parser.add_argument("--federation-config", help='Flower simulation settings, e.g. "client-resources-num-cpus=1"')
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()

    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    for sites in args.sites:
        rows = [r for r in rows if r["sites"] != sites] + [run_row(sites, args.run_config, args.federation_config)]
        rows.sort(key=lambda r: r["sites"])
        write_json(args.out, {"benchmark": "scale", "rows": rows})
        print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
