"""fedsynth ClientApp: on the server's request, distil this site's records and reply with the signed set.

Settings: the server's request carries the round (run id, nonce) and the distillation
parameters; `context.node_config` says where this site's data, ledger and signing key
are (in simulation: `partition-id`/`num-partitions` of a built-in dataset).
"""

from __future__ import annotations

import hashlib
import resource
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsynth.client.config import DistillConfig, from_request
from fedsynth.client.engine import distill
from fedsynth.client.progress import SiteProgress
from fedsynth.common.data import ImageDataset, load_dataset
from fedsynth.common.errors import FedsynthError
from fedsynth.common.ledger import Ledger
from fedsynth.common.partition import site_dataset
from fedsynth.common.payload import refusal_record, telemetry_record, to_record, valid_site_name
from fedsynth.common.runtime import fedsynth_home
from fedsynth.common.signing import generate_signing_key, load_private_key, sign

app = ClientApp()


def _site_name(node: dict, context: Context) -> str:
    if "site" in node:
        if not valid_site_name(node["site"]):
            raise ValueError("the node config's site name must match [A-Za-z0-9_-]{1,64}")
        return str(node["site"])
    if "partition-id" in node:
        return f"site-{int(node['partition-id'])}"
    return f"node-{context.node_id}"


def site_seed(round_seed: int, site: str) -> int:
    """This site's public seed: the round's seed mixed with the site's name.

    It drives the initial images and the network draws. With one seed shared by every site,
    the same image slot at two IID sites correlated 0.63 (0.26 with their own seeds, as much
    as two images of one class at one site): the pool repeated itself. Public, like the
    round's seed: it is in the signed claim.
    """
    digest = hashlib.sha256(f"fedsynth-site-seed/{round_seed}/{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1  # a non-negative 31-bit int


def distill_config(request: dict, site: str) -> DistillConfig:
    """The engine settings a site uses for the server's request (the run config's engine keys,
    `fedsynth.client.config`).

    Non-IID sites hold some classes sparsely or not at all, and distil every class anyway."""
    return from_request(request, seed=site_seed(_round_seed(request), site), every_class_populated=False)


def _round_seed(request: dict) -> int:
    seed = request.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"the request's seed must be an integer, got {str(seed)[:40]!r}")
    return seed


def site_data(node: dict, request: dict) -> ImageDataset:
    """The site's own folder in deployment; its partition of a built-in dataset in simulation."""
    if node.get("data-dir"):
        return load_dataset(data_dir=str(node["data-dir"]), image_size=int(request.get("image-size", 28)))
    dataset = load_dataset(str(node.get("dataset", request["dataset"])), train=True)
    if "partition-id" in node:
        return site_dataset(dataset, int(node["num-partitions"]), int(node["partition-id"]),
                            str(request.get("partition", "iid")), float(request.get("alpha", 0.5)),
                            int(request.get("seed", 0)))
    return dataset


def _site_paths(node: dict, request: dict, site: str) -> tuple[Path, Path, Path]:
    """Where this site keeps its ledger, work and key. Only a simulated site (one with a
    `partition-id`) lets the run choose: a real site's ledger location is the site's own
    business, or a server could point it at a fresh ledger and reset its budget."""
    simulated_home = str(request.get("sites-dir", "")) if "partition-id" in node else ""
    default_home = Path(simulated_home) / site if simulated_home else fedsynth_home() / "sites" / site
    home = Path(str(node.get("home", default_home)))
    ledger = Path(str(node.get("ledger", home / "ledger.jsonl")))
    if node.get("signing-key"):
        key = Path(str(node["signing-key"]))
    elif "partition-id" in node:
        key = Path(str(request["keys-dir"])) / f"{site}.pem"
    else:
        raise ValueError("this SuperNode has no signing-key in its --node-config; make one with `fedsynth keys`")
    return home, ledger, key


def _site_budget(node: dict, request: dict, ledger: Path) -> float | None:
    """Total ε of a new ledger: the site's own setting; a new simulated site's may come from the run config
    (an existing ledger keeps the budget it was created with)."""
    if "site-budget" in node:
        return float(node["site-budget"])
    if "partition-id" in node and "site-budget" in request and not ledger.exists():
        return float(request["site-budget"])
    return None


def _signing_key(path: Path, simulated: bool):
    """Load the site's key. Only a simulated site makes one on first use (trust on first use);
    a real site's key comes from `fedsynth keys` and its public half is registered with the server."""
    if not path.exists():
        if not simulated:
            raise ValueError(f"signing key {path} does not exist; make it with `fedsynth keys`")
        generate_signing_key(path, path.with_suffix(".pub"))
    return load_private_key(path)


@app.train()
def distil_and_upload(msg: Message, context: Context) -> Message:
    node = dict(context.node_config)
    started = time.monotonic()
    site = f"node-{context.node_id}"
    try:
        request = dict(msg.content["request"])
        site = _site_name(node, context)
        config = distill_config(request, site)
        run_id, nonce = str(request["run-id"]), str(request["nonce"])
        home, ledger_path, key_path = _site_paths(node, request, site)
        key = _signing_key(key_path, simulated="partition-id" in node)  # before any budget is spent
        ledger = Ledger.open(ledger_path, budget_epsilon=_site_budget(node, request, ledger_path), signer=key)
        dataset = site_data(node, request)
        progress = SiteProgress(site, dataset, config)
        result = distill(dataset, config, ledger, home / "runs" / _run_folder(run_id), progress=False,
                         device=str(node.get("device", "auto")), dataset_label=dataset.name,
                         on_iteration=progress, on_synthesis=progress.synthesis)
    except (FedsynthError, KeyError, TypeError, ValueError, OSError) as err:  # refusals are answers, not crashes
        reason = f"{type(err).__name__}: {err}" if isinstance(err, (KeyError, TypeError)) else str(err)
        return Message(refusal_record(site, reason), reply_to=msg)
    synthetic = result.synthetic
    signature = sign(key, synthetic.claim, run_id, nonce)
    record = to_record(synthetic.images, synthetic.labels, synthetic.claim, signature, site, run_id, nonce,
                       synthetic.soft_labels)
    # peak RSS of this worker process (in simulation a worker may have served earlier sites: an upper bound)
    record["telemetry"] = telemetry_record(time.monotonic() - started,
                                           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return Message(record, reply_to=msg)


def _run_folder(run_id: str) -> str:
    """The server's run id as a folder name: only digits and letters, else its hash (it never becomes a path)."""
    if run_id.isascii() and run_id.isalnum() and len(run_id) <= 64:
        return run_id
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]
