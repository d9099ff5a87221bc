"""`temde demo`: real data prepared once, then `temde compare`: T-EMDE against GPO, attention, mean, max pooling
and the linear dual encoder, each source's test split alone, every difference with a 95% interval."""
from __future__ import annotations

import shlex
import sys

from temde.cli.compare import _seeds, add_model_options, pool_options


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: T-EMDE vs the other poolings on real data, with 95%% intervals",
                       description=__doc__.replace("\n", " "),
                       epilog="Data: emoji (9 vendors), icon sets and openclipart, a fixed subset prepared into the "
                              "cache. --out is this command's own folder: rerun with the same settings and its "
                              "finished runs are reused; other settings need --force or another --out.")
    p.add_argument("--quick", action="store_true",
                   help="emoji only (300 concepts), one seed: a first look, sized for ~10 minutes on 2 CPU cores "
                        "(default: three sources of 700 concepts each, three seeds, sized for ~45 minutes)")
    p.add_argument("--out", default="runs/demo",
                   help="output folder (report.md, results.json, compare.png, runs/); default %(default)s")
    p.add_argument("--force", action="store_true",
                   help="start over in --out: retrain every run there, whatever settings made them")
    p.add_argument("--data", default=None,
                   help="an existing precomp folder with train, dev and test* splits (default: the demo's data, "
                        "prepared once into the cache)")
    p.add_argument("--cache", default=None, help="download/feature cache (default $TEMDE_CACHE or ~/.cache/temde)")
    add_model_options(p)
    p.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default 0 with --quick, else "
                                                                "0,1,2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 6)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once (default: 2 on a CPU with 2 or more cores, else 1)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from temde.demo import DemoSettings, run_demo
    from temde.errors import TemdeError
    from temde.training.loop import TrainingInterrupted

    for flag, value in (("--epochs", args.epochs), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            raise TemdeError(f"{flag}: expected a positive integer, got {value}")
    settings = DemoSettings(
        out=args.out, quick=args.quick, data=args.data, cache=args.cache, hosts=args.hosts, poolings=args.poolings,
        reference=args.reference, pool_options=pool_options(args), seeds=args.seeds, epochs=args.epochs,
        jobs=args.jobs,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"), progress=not args.quiet,
        force=args.force)
    try:
        run_demo(settings)
    except ValueError as exc:
        raise TemdeError(str(exc)) from None
    except TrainingInterrupted as exc:
        print("\ninterrupted", file=sys.stderr)
        again = shlex.join(["temde", *[a for a in args.argv if a != "--force"]])
        print(f"{exc}; continue with: {again} (finished runs are reused, this one resumes)", file=sys.stderr)
        return 130
    return 0
