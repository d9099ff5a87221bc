"""`temde ablate`: train T-EMDE variants and the attention baseline under the same seeds; CSV + PNG + table."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("ablate", help="T-EMDE design choices vs attention pooling, several seeds (CSV + PNG)",
                       description=__doc__.splitlines()[0],
                       epilog="--out is this command's own folder: rerun with the same settings and its finished "
                              "runs are reused; other settings need --force or another --out.")
    p.add_argument("--data", default=None, help="precomp folder (default: the prepared openclipart in the cache)")
    p.add_argument("--out", default="runs/ablate",
                   help="output folder (ablation.csv, ablation.png, runs/); default %(default)s")
    p.add_argument("--force", action="store_true", help="start over in --out: retrain every run there")
    p.add_argument("--variants", default=None, help="comma-separated subset (default: all; see --list)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; default %(default)s")
    p.add_argument("--model", default="saf-small", help="model preset; default %(default)s")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the preset's)")
    p.add_argument("--word-vectors", default="none",
                   help='"none" (300-d words learned from scratch), "glove" (GloVe 6B-50d) or a GloVe text file; '
                        "default %(default)s")
    p.add_argument("--dev-subset", type=int, default=None,
                   help="select the best epoch on the first N dev images (default: all, as `temde demo`)")
    p.add_argument("--global-loss", type=float, default=None, metavar="W",
                   help="weight of the global-vector matching loss (0 = off); default: the preset's (saf-small: "
                        "1.0), as `temde demo`")
    p.add_argument("--test-split", default="test", help="the split every run is scored on; default %(default)s")
    p.add_argument("--reference", default="temde",
                   help="the variant every other one is compared with (95%% paired bootstrap interval of the rsum "
                        "difference); default %(default)s")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--merge", nargs="+", metavar="DIR",
                   help="combine the ablation.csv of these folders into --out instead of training (default: train)")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    import torch

    from temde.bench.ablate import VARIANTS, AblationSettings, format_summary, run_ablation
    from temde.errors import TemdeError

    if args.list:
        for name, (pooling, options, model, train) in VARIANTS.items():
            print(f"{name:24s} pooling={pooling} {options or ''} {model or ''} {train or ''}")
        return 0
    if args.merge:
        from temde.bench.ablate import merge

        rows = merge(args.merge, Path(args.out), force=args.force)
        print(format_summary(rows))
        print(f"wrote {Path(args.out) / 'ablation.csv'} and {Path(args.out) / 'ablation.png'}")
        return 0
    data = args.data
    if data is None:
        from temde.features import default_cache_root

        data = str(default_cache_root() / "data" / "openclipart")
        if not (Path(data) / "manifest.json").is_file():
            raise TemdeError(f"{data}: not prepared; run `temde prepare openclipart --out {data}` or pass --data")
    variants = [v for v in args.variants.split(",") if v] if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise TemdeError(f"unknown variant(s) {unknown}; see `temde ablate --list`")
    settings = AblationSettings(
        data=data, out=args.out, variants=variants, seeds=[int(s) for s in args.seeds.split(",")], model=args.model,
        epochs=args.epochs, word_vectors=None if args.word_vectors == "none" else args.word_vectors,
        dev_subset=args.dev_subset, global_loss=args.global_loss, force=args.force, test_split=args.test_split,
        reference=args.reference,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = run_ablation(settings)
    print(format_summary(rows))
    print(f"wrote {Path(args.out) / 'ablation.csv'}, {Path(args.out) / 'ablation.png'} and "
          f"{Path(args.out) / 'intervals.json'}")
    return 0
