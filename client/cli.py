"""`fedsynth` command line: distill a site's data, evaluate a synthetic set, simulate a federated round."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from safetensors import SafetensorError

from fedsynth.client.config import add_arguments, check_settings, epsilon_value, from_arguments
from fedsynth.common.data import DATASETS, DataError
from fedsynth.common.errors import FedsynthError, one_line
from fedsynth.common.runtime import fedsynth_home


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`fedsynth distill: error: …`, exit 2); `--help` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message, 1000)} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--dataset", choices=DATASETS, help="built-in dataset")
    source.add_argument("--data-dir", type=Path, help="ImageFolder tree: one sub-folder of images per class")
    parser.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if missing")
    parser.add_argument("--image-size", type=int, default=28, help="images from --data-dir are resized to this")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="channels for --data-dir (default: from files)")


def _distill_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a site's records into a DP synthetic set")
    _add_data_arguments(p, required=True)
    add_arguments(p)
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="switch differentiable augmentation off")
    p.add_argument("--limit", type=_positive_int, help="use a random N records (seeded by --seed), for quick trials")
    p.add_argument("--ledger", type=Path, help="site ledger (default $FEDSYNTH_HOME/ledger.jsonl)")
    p.add_argument("--site-budget", type=epsilon_value, help="total ε of a new ledger (default 10; 'inf' for research)")
    p.add_argument("--signing-key", type=Path,
                   help="site's Ed25519 key (from `fedsynth keys`): signs each ledger entry")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--quiet", action="store_true")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="train fresh networks on a synthetic set and report test accuracy")
    p.add_argument("set", type=Path, help="synthetic.safetensors or the folder holding it")
    _add_data_arguments(p, required=True)
    p.add_argument("--test-dir", type=Path, help="test images for --data-dir (ImageFolder)")
    p.add_argument("--model", choices=("auto", "convnet", "head", "cnn"), default="auto",
                   help="head: a linear head fitted on the set's front end (auto: when the set was made for one); "
                   "cnn: --seeds small CNNs on the set's front end; convnet: ConvNets trained on the pixels")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--augment", action="store_true",
                   help="train with the distillation's DSA augmentation (off by default: it costs accuracy on DP sets)")
    p.add_argument("--uniform", action="store_true",
                   help="ignore a pool file's per-image weights (by default it trains as the server did: weighted)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--quiet", action="store_true")


def _simulate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="one federated round with N simulated sites (Flower simulation engine)")
    p.add_argument("--sites", type=int, default=10, help="number of simulated sites (Flower's num-supernodes)")
    p.add_argument("--run-config",
                   help='overrides of [tool.flwr.app.config], e.g. "epsilon=1.0 partition=\'dirichlet\'"')
    p.add_argument("--app", type=Path, help="a Flower app folder (default: fedsynth's own app, as installed)")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs too (default: fedsynth's "
                   "lines only; the logs are shown anyway when the run fails)")
    p.add_argument("--federation-config", help='Flower simulation settings, e.g. "client-resources-num-cpus=4 '
                   'client-resources-num-gpus=0.25" (sites run at once = cores / num-cpus)')


def _keys_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make a CA, the SuperLink's TLS certificate and every site's keys")
    p.add_argument("--out", type=Path, required=True, help="key folder (see README: Deployment)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--sites", type=int, help="make keys for N sites named site-0 ... site-(N-1)")
    names.add_argument("--site-names", nargs="+", help="make keys for these sites (also: add or rotate one site)")
    p.add_argument("--hosts", nargs="+", help="host names and IPs the SuperLink is reached at (its certificate's "
                   "subject alternative names; default localhost 127.0.0.1 ::1). Without --hosts an existing "
                   "SuperLink certificate is kept")
    p.add_argument("--force", action="store_true", help="replace existing keys (key rotation)")


def _deploy_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="start Flower's SuperLink or a site's SuperNode with fedsynth's secure settings")
    roles = p.add_subparsers(dest="role", required=True)
    link = roles.add_parser("superlink", help="the coordinator: TLS, SuperNode authentication, no runtime installs")
    link.add_argument("--keys", type=Path, required=True, help="the folder made by `fedsynth keys` (needs superlink/)")
    link.add_argument("--host", default="0.0.0.0", help="address to listen on (default all interfaces)")
    link.add_argument("--port", type=int, default=8000, help="the one HTTPS port sites and the CLI connect to")
    link.add_argument("--database", type=Path, default=Path("superlink.db"), help="SuperLink state (SQLite)")
    node = roles.add_parser("supernode", help="one site: connects out to the SuperLink, runs the ClientApp locally")
    node.add_argument("--site-dir", type=Path, required=True,
                      help="this site's folder from `fedsynth keys` (sites/SITE)")
    node.add_argument("--superlink", required=True, help="HOST:PORT of the coordinator's SuperLink")
    node.add_argument("--data-dir", type=Path, required=True,
                      help="the site's ImageFolder tree (never leaves the site)")
    node.add_argument("--home", type=Path, help="work folder (ledger, checkpoints); default $FEDSYNTH_HOME/sites/SITE")
    node.add_argument("--ledger", type=Path, help="privacy ledger (default HOME/ledger.jsonl)")
    node.add_argument("--site-budget", type=epsilon_value, help="total ε a new ledger allows (default 10)")
    node.add_argument("--port", type=int, default=9094, help="local-only port for the ClientApp runtime")
    node.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    for parser in (link, node):
        parser.add_argument("--print", action="store_true", help="print the command instead of running it")


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="re-check every ε claim independently; or measure an empirical lower bound on ε")
    p.add_argument("path", type=Path, nargs="?", help="a site's ledger file or a server output folder")
    p.add_argument("--public-key", type=Path, help="the site's Ed25519 public key: verify the ledger's signatures")
    p.add_argument("--anchors", type=Path, help="the server's ledger-anchors.json: the ledger must still hold the "
                   "last entry the server accepted from this site (catches a ledger rolled back)")
    p.add_argument("--site", help="the site's name in --anchors (default: the ledger's folder name)")
    p.add_argument("--json", type=Path, help="write the result as JSON here")
    p.add_argument("--report", type=Path, default=Path("audit-report"),
                   help="folder for audit.md, audit.json and epsilon_over_time.png (default ./audit-report)")
    e = p.add_argument_group("--empirical: canary audit of the distillation pipeline (Steinke, Nasr, Jagielski 2023)")
    e.add_argument("--empirical", action="store_true", help="measure an empirical lower bound on ε instead")
    _add_data_arguments(e, required=False)
    e.add_argument("--canaries", type=int, default=200, help="canary records m, each included with probability 1/2")
    e.add_argument("--base-records", type=int, default=0, help="ordinary records beside the canaries (0: the "
                   "canaries are the whole site, the audit's strongest setting)")
    e.add_argument("--guess-fraction", type=float, default=0.2, help="fraction of canaries guessed (half in, half out)")
    add_arguments(e, ("front_end", "ipc", "epsilon", "delta", "iterations", "inner_steps", "width", "head_epochs",
                      "head_batch", "head_lr", "synthesis_steps", "synthesis_schedule", "class_pull", "temperature",
                      "seed"))
    e.add_argument("--eval-epochs", type=int, default=100, help="epochs of the model the loss attack targets")
    e.add_argument("--device", default="auto")
    e.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedsynth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _distill_parser(sub)
    _evaluate_parser(sub)
    _simulate_parser(sub)
    _keys_parser(sub)
    _deploy_parser(sub)
    _audit_parser(sub)
    return parser


def _run_distill(args: argparse.Namespace) -> int:
    from fedsynth.client.engine import distill
    from fedsynth.common.data import load_dataset
    from fedsynth.common.ledger import Ledger

    config = from_arguments(args)
    check_settings(config)  # before any file is made
    dataset = load_dataset(args.dataset, args.data_dir, train=True, download=args.download,
                           image_size=args.image_size, channels=args.channels)
    if args.limit:
        import torch

        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))[: args.limit]
        dataset = dataset.subset(chosen.sort().values)
    signer = None
    if args.signing_key:
        from fedsynth.common.signing import load_private_key

        signer = load_private_key(args.signing_key)
    ledger = Ledger.open(args.ledger or fedsynth_home() / "ledger.jsonl", budget_epsilon=args.site_budget,
                         signer=signer)
    result = distill(dataset, config, ledger, args.out, device=args.device, progress=not args.quiet,
                     dataset_label=args.dataset or str(args.data_dir))
    claim = result.synthetic.claim
    eps = f"{claim.epsilon:.3g}" if claim.private else "inf (no noise)"
    print(f"wrote {args.out}/synthetic.safetensors, claim.json, synthetic.png: {len(result.synthetic.labels)} images, "
          f"ε={eps} δ={claim.delta:g} σ={claim.noise_multiplier:.4g} q={claim.sample_rate:.4g} "
          f"releases={claim.releases}; site total ε={ledger.spent_epsilon():.4g} of {ledger.budget_epsilon():.4g} "
          f"({ledger.path}) in {result.seconds:.0f}s")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from fedsynth.common.data import load_dataset
    from fedsynth.common.evaluation import TrainConfig, evaluate_cnn_head, evaluate_on_front_end, evaluate_synthetic
    from fedsynth.common.runtime import resolve_device
    from fedsynth.common.synthetic_set import SetError, load_synthetic_set, set_problem, soft_label_problem
    from fedsynth.common.versions import library_versions

    synthetic = load_synthetic_set(args.set)
    if args.data_dir is not None:
        if args.test_dir is None:
            raise DataError("evaluating against an image folder needs --test-dir with held-out test images")
        test = load_dataset(data_dir=args.test_dir, image_size=args.image_size, channels=args.channels)
    else:
        test = load_dataset(args.dataset, train=False, download=args.download)
    problem = set_problem(synthetic.images, synthetic.labels, test.num_classes, test.image_shape)
    if problem:
        raise SetError(f"{args.set}: not a set for {test.name}: {problem}")
    weights = None if args.uniform else synthetic.weights
    # a site's set names its front end; a server's pool file holds soft labels only when made on one
    front_end = synthetic.claim.front_end if synthetic.claim is not None else (
        "none" if synthetic.soft_labels is None else "scatter")
    on = "scatter" if front_end == "none" else front_end  # the front end a head is trained on
    if synthetic.soft_labels is not None and (problem := soft_label_problem(synthetic.soft_labels, synthetic.labels,
                                                                            test.num_classes)):
        raise SetError(f"{args.set}: {problem}")
    if args.model == "head" or (args.model == "auto" and front_end != "none"):
        result = evaluate_on_front_end(synthetic.images, synthetic.labels, test, on, synthetic.soft_labels, weights,
                                       synthetic.sites, synthetic.class_counts, synthetic.temperatures,
                                       synthetic.aggregation)
        trained = f"a linear head on the {result['train_config']['model'].split()[0]} front end"
    elif args.model == "cnn":
        result = evaluate_cnn_head(synthetic.images, synthetic.labels, test, on, synthetic.soft_labels, weights,
                                   args.seeds)
        trained = f"{args.seeds} CNN heads on the {on} front end"
    else:
        config = TrainConfig(epochs=args.epochs, width=args.width, augment=args.augment)
        result = evaluate_synthetic(synthetic.images, synthetic.labels, test, args.seeds, config,
                                    resolve_device(args.device), progress=not args.quiet, weights=weights)
        trained = f"{args.seeds} ConvNet seeds"
    result.update(set=str(args.set), test=test.name, versions=library_versions(),
                  claim=None if synthetic.claim is None else synthetic.claim.to_json_dict())
    print(f"accuracy {100 * result['accuracy_mean']:.2f} ± {100 * result['accuracy_std']:.2f} % "
          f"over {trained} on {test.name} test ({len(test)} images)"
          + (", each image weighted as in the file" if weights is not None else ""))
    if args.json:
        from fedsynth.common.synthetic_set import write_json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0


def _run_simulate(args: argparse.Namespace) -> int:
    import signal
    import tempfile

    from fedsynth.common.simulation import run_simulation, write_app_variant

    # SIGTERM (a scheduler, `kill`, Ctrl-C's cousin) unwinds like Ctrl-C: the SuperLink, its simulation and
    # Ray's processes are stopped on the way out instead of being left running
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with tempfile.TemporaryDirectory(prefix="fedsynth-app-") as tmp:
        app = args.app or write_app_variant(Path(tmp))
        return run_simulation(app, args.sites, args.run_config, federation_config=args.federation_config,
                              verbose=args.verbose)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_keys(args: argparse.Namespace) -> int:
    from fedsynth.common.pki import DEFAULT_HOSTS, KeyPlan, make_keys

    if args.sites is None and not args.site_names and not args.hosts:
        raise ValueError("say which keys to make: --sites N, --site-names NAME..., "
                         "or --hosts NAME... (certificate only)")
    if args.sites is not None and args.sites < 1:
        raise ValueError("--sites must be at least 1")
    sites = args.site_names or [f"site-{i}" for i in range(args.sites or 0)]
    server_cert = bool(args.hosts) or not (args.out / "superlink" / "server.pem").exists()
    plan = KeyPlan(args.out, sites, list(args.hosts or DEFAULT_HOSTS), server_certificate=server_cert, force=args.force)
    make_keys(plan)
    print(f"wrote keys for {len(sites)} site(s) under {args.out}: CA in ca/ (keep offline), SuperLink TLS in "
          f"superlink/{' (hosts: ' + ' '.join(plan.hosts) + ')' if server_cert else ' (kept)'}, the server's "
          f"public keys in server/, each site's folder in sites/SITE/ (private keys 0600)")
    return 0


def _run_deploy(args: argparse.Namespace) -> int:
    import os

    from fedsynth.common.deployment import describe, superlink_command, supernode_command

    if args.role == "superlink":
        if not (args.keys / "superlink" / "server.pem").exists():
            raise FileNotFoundError(f"{args.keys}/superlink/server.pem missing: run `fedsynth keys` first")
        command = superlink_command(args.keys, args.port, args.database, args.host)
    else:
        site = args.site_dir.resolve().name
        home = (args.home or fedsynth_home() / "sites" / site).resolve()
        config: dict = {"site": site, "data-dir": str(args.data_dir.resolve()), "home": str(home),
                        "signing-key": str((args.site_dir / "signing.pem").resolve()), "device": args.device}
        if args.ledger:
            config["ledger"] = str(args.ledger.resolve())
        if args.site_budget is not None:
            config["site-budget"] = args.site_budget
        for needed in ("supernode-auth.key", "signing.pem", "ca.crt"):
            if not (args.site_dir / needed).exists():
                raise FileNotFoundError(f"{args.site_dir / needed} missing: "
                                        "copy the site's folder from `fedsynth keys`")
        command = supernode_command(args.site_dir.resolve(), args.superlink, args.port, config,
                                    (args.site_dir / "ca.crt").resolve(), max_retries=None)
    if args.print:
        print(describe(command))
        return 0
    os.execvp(command[0], command)  # become the Flower process, so service managers see and stop it directly


def _run_audit(args: argparse.Namespace) -> int:
    from fedsynth.common.audit.recheck import audit_ledger, audit_run_dir, read_anchors
    from fedsynth.common.audit.report import release_table, site_table, write_report
    from fedsynth.common.signing import load_public_key
    from fedsynth.common.synthetic_set import write_json

    if args.empirical:
        return _run_empirical_audit(args)
    if args.path is None:
        raise ValueError("give a ledger file or a server output folder")
    if args.path.is_dir():
        audits, problems = audit_run_dir(args.path, args.anchors)
    elif args.path.exists():
        key = load_public_key(args.public_key) if args.public_key else None
        site = args.site or args.path.resolve().parent.name
        anchor, problems = None, []
        if args.anchors:
            anchor = read_anchors(args.anchors).get(site)
            if anchor is None:
                problems.append(f"{args.anchors}: the server has no record of site {site!r} (use --site)")
        audits = [audit_ledger(args.path, key, site, anchor=anchor)]
    else:
        raise FileNotFoundError(f"{args.path} does not exist")
    payload = write_report(audits, problems, args.report, str(args.path))
    print(site_table(audits) + "\n" + release_table(audits))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, payload)
    for failure in payload["failures"]:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"{'every claim holds' if payload['ok'] else 'AUDIT FAILED'}; report in {args.report}/audit.md")
    return 0 if payload["ok"] else 1


def _run_empirical_audit(args: argparse.Namespace) -> int:
    from fedsynth.client.empirical_audit import run_empirical_audit, summary_table
    from fedsynth.common.data import load_dataset
    from fedsynth.common.synthetic_set import write_json

    if args.path is not None:
        raise ValueError("--empirical audits a fresh run of the pipeline, not a ledger or folder: drop the path")
    if args.dataset is None and args.data_dir is None:
        raise ValueError("--empirical needs --dataset or --data-dir: the canaries are drawn from its records")
    data = load_dataset(args.dataset, args.data_dir, train=True, download=args.download, image_size=args.image_size,
                        channels=args.channels)
    config = from_arguments(args, every_class_populated=False)
    check_settings(config)
    row = run_empirical_audit(data, config, args.canaries, args.base_records, args.guess_fraction,
                              args.eval_epochs, progress=not args.quiet, report_dir=args.report,
                              device=args.device)
    print(summary_table(row))
    write_json(args.report / "empirical.json", row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, row)
    bound, claimed = row["empirical_epsilon_lower_bound"], row["recomputed_epsilon"]
    if claimed is not None and bound > claimed:
        print(f"AUDIT FAILED: the empirical lower bound {bound:.3f} exceeds the recomputed ε {claimed:.3f}",
              file=sys.stderr)
        return 1
    print(f"report in {args.report}/ (empirical.json, canary_scores.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"distill": _run_distill, "evaluate": _run_evaluate, "simulate": _run_simulate, "keys": _run_keys,
                "deploy": _run_deploy, "audit": _run_audit}
    try:
        return handlers[args.command](args)
    except (FedsynthError, ValueError, OSError, SafetensorError) as err:  # every refusal: one line, exit 2
        message = str(err) if isinstance(err, FedsynthError) else f"{type(err).__name__}: {err}"
        if isinstance(err, OSError) and err.filename is not None:
            message = f"{err.filename}: {err.strerror or err}"
        print(f"fedsynth {args.command}: error: {one_line(message, 1000)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
