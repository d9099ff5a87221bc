"""`temde compare`: train hosts x poolings x seeds on one data set; every comparison with a 95% interval."""
from __future__ import annotations

import argparse


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(value) for value in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _pool_option(text: str) -> tuple[str, str, object]:
    """POOLING:KEY=VALUE -> (pooling, key, value), VALUE parsed as `temde train --pool-option` parses it."""
    from temde.cli.train import _key_value

    pooling, sep, rest = text.partition(":")
    if not sep or not pooling:
        raise argparse.ArgumentTypeError(f"expected POOLING:KEY=VALUE (e.g. temde:mean_weight=0), got {text!r}")
    return (pooling, *_key_value(rest))


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--hosts, --poolings, --reference: what is compared (shared with `temde demo`)."""
    p.add_argument("--hosts", type=_names, default=["vse-small"],
                   help="comma-separated model presets (`temde models`); default vse-small (saf-small: the "
                        "cross-attention host)")
    p.add_argument("--poolings", type=_names, default=["temde", "gpo", "attention", "mean", "max"],
                   help="comma-separated poolings; default temde,gpo,attention,mean,max (the linear dual "
                        "encoder is always added)")
    p.add_argument("--reference", default="temde",
                   help="the pooling every other model is compared with; default %(default)s")
    p.add_argument("--pool-option", action="append", type=_pool_option, default=[], metavar="POOLING:KEY=VALUE",
                   help="an option for one pooling; the options given for a pooling replace the preset's recipe for "
                        "it, e.g. temde:mean_weight=0 trains the sketch alone (repeatable; default: each preset's "
                        "recipe, `temde models NAME`)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="poolings x hosts x seeds on one data set, with paired bootstrap intervals",
        description=__doc__.splitlines()[0],
        epilog="Each test split (every split named test*) is reported alone. --out is this command's own folder: "
               "rerun with the same settings and finished runs are reused; other settings need --force.")
    p.add_argument("--data", required=True, help="a prepared precomp folder (train, dev, test* splits)")
    p.add_argument("--out", default="runs/compare", help="output folder; default %(default)s")
    add_model_options(p)
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2, 3, 4], help="comma-separated seeds; default 0,1,2,3,4")
    p.add_argument("--test-splits", type=_names, default=None,
                   help="comma-separated test splits (default: every split whose name starts with test)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: each preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size per run (default: each preset's)")
    p.add_argument("--lr-update", type=int, default=None,
                   help="epochs between lr x0.1 decays (default: each preset's)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, metavar="N",
                   help="cap on optimizer steps per epoch: a fixed training budget on large data (default: none)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each a process with cpu_count/jobs threads (CPU); default 1")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples; default %(default)s")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    p.add_argument("--force", action="store_true", help="start over in --out (every run retrained)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def pool_options(args: argparse.Namespace) -> dict[str, dict]:
    """--pool-option values grouped by pooling; a pooling not compared is a one-line error."""
    from temde.errors import TemdeError

    options: dict[str, dict] = {}
    for pooling, key, value in args.pool_option:
        if pooling not in args.poolings:
            raise TemdeError(f"--pool-option {pooling}:{key}: {pooling!r} is not among the poolings "
                             f"({','.join(args.poolings)})")
        options.setdefault(pooling, {})[key] = value
    return options


def run(args: argparse.Namespace) -> int:
    import torch

    from temde.errors import TemdeError
    from temde.experiments.compare import CompareSettings, run_compare

    if args.epochs is not None and args.epochs < 1:
        raise TemdeError(f"--epochs: expected a positive integer, got {args.epochs}")
    for flag, value in (("--batch-size", args.batch_size), ("--lr-update", args.lr_update),
                        ("--max-steps-per-epoch", args.max_steps_per_epoch), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            raise TemdeError(f"{flag}: expected a positive integer, got {value}")
    if args.resamples < 100:
        raise TemdeError(f"--resamples: expected at least 100, got {args.resamples}")
    settings = CompareSettings(
        data=args.data, out=args.out, hosts=args.hosts, poolings=args.poolings, reference=args.reference,
        seeds=args.seeds, test_splits=args.test_splits, epochs=args.epochs, batch_size=args.batch_size,
        lr_update=args.lr_update, max_steps_per_epoch=args.max_steps_per_epoch, resamples=args.resamples,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"), progress=not args.quiet,
        force=args.force, jobs=args.jobs, pool_options=pool_options(args))
    try:
        run_compare(settings)
    except ValueError as exc:
        raise TemdeError(str(exc)) from None
    return 0
