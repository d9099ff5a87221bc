"""`temde demo`: prepare the default data, train SAF with attention and with T-EMDE pooling, compare."""
from __future__ import annotations

import shlex
import sys

from temde.cli.train import _key_value


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: attention vs T-EMDE pooling on the default real data",
                       description=__doc__.splitlines()[0],
                       epilog="--out is this command's own folder: rerun with the same settings and its finished "
                              "runs are reused (an interrupted one resumes); other settings need --force or "
                              "another --out.")
    p.add_argument("--quick", action="store_true",
                   help="one seed on a 1,200-image subset: a smoke test, not a comparison (measured 4.5 min on "
                        "2 idle CPU cores from an empty cache; a busy machine takes several times longer)")
    p.add_argument("--out", default="runs/demo",
                   help="output folder (results.json, report.md, figures, runs/); default %(default)s")
    p.add_argument("--force", action="store_true",
                   help="start over in --out: retrain every run there, whatever settings made them")
    p.add_argument("--data", default=None,
                   help="an existing precomp folder (default: openclipart, prepared once into the cache)")
    p.add_argument("--cache", default=None, help="download/feature cache (default $TEMDE_CACHE or ~/.cache/temde)")
    p.add_argument("--model", default="saf-small", help="model preset; default %(default)s")
    p.add_argument("--poolings", default="attention,temde", help="comma-separated poolings to compare; "
                                                                 "default %(default)s")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0 with --quick, else 0,1,2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the preset's; saf-small: 14)")
    p.add_argument("--limit", type=int, default=None, help="openclipart subset size (default: 1200 with --quick, "
                                                           "else all)")
    p.add_argument("--word-vectors", default="none",
                   help='"none" (300-d words learned from scratch), "glove" (GloVe 6B-50d) or a GloVe text file; '
                        "default %(default)s")
    p.add_argument("--temde-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="override one option of the demo's T-EMDE pool, e.g. residual=false or n_bits=4 "
                        "(repeatable; default: the preset's recipe, saf-small: residual=true)")
    p.add_argument("--global-loss", type=float, default=None,
                   help="weight of the global-vector matching loss; default: the preset's (saf-small: 1.0)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from temde.demo import DemoSettings, preset_recipe, run_demo
    from temde.training.loop import TrainingInterrupted

    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
    settings = DemoSettings(
        out=args.out, quick=args.quick, data=args.data, cache=args.cache, model=args.model,
        poolings=[p for p in args.poolings.split(",") if p], seeds=seeds, epochs=args.epochs, limit=args.limit,
        pool_options=({**preset_recipe(args.model)[0], "temde": {**preset_recipe(args.model)[0].get("temde", {}),
                                                                  **dict(args.temde_option)}}
                      if args.temde_option else None),
        word_vectors=None if args.word_vectors == "none" else args.word_vectors, global_loss=args.global_loss,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"), progress=not args.quiet,
        force=args.force)
    try:
        run_demo(settings)
    except TrainingInterrupted as exc:
        print("\ninterrupted", file=sys.stderr)
        again = shlex.join(["temde", *[a for a in args.argv if a != "--force"]])
        print(f"{exc}; continue with: {again} (finished runs are reused, this one resumes)", file=sys.stderr)
        return 130
    return 0
