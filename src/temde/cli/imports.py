"""`temde import sgraf`: turn an SGRAF checkpoint (model_best.pth.tar) into a temde run folder."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="import another code base's checkpoint as a temde run",
                              description=__doc__.splitlines()[0])
    sources = p.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True
    sgraf = sources.add_parser(
        "sgraf", help="an SGRAF (Paranioar/SGRAF) SAF or SGR checkpoint",
        description="Writes RUN/best.pt (weights, config, vocabulary) and RUN/config.json; `temde eval`, "
                    "`temde index build`, `temde search` and `temde train --init` take RUN/best.pt. The file is "
                    "loaded without running code (weights_only, only argparse.Namespace allowed).")
    sgraf.add_argument("--checkpoint", required=True, metavar="PTH",
                       help="SGRAF's checkpoint, e.g. model_best.pth.tar")
    sgraf.add_argument("--vocab", required=True, metavar="JSON",
                       help="the vocabulary json it was trained with, e.g. f30k_precomp_vocab.json")
    sgraf.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    sgraf.add_argument("--force", action="store_true", help="replace RUN/best.pt if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from temde.data.vocab import atomic_write
    from temde.errors import TemdeError
    from temde.models.importers import import_sgraf
    from temde.training.checkpoint import save_checkpoint

    out = Path(args.out)
    best = out / "best.pt"
    if best.exists() and not args.force:
        raise TemdeError(f"{best} exists: choose another --out, or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise TemdeError(f"{out}: exists and is not a folder")
    parts = import_sgraf(args.checkpoint, args.vocab)
    save_checkpoint(best, parts["model"], parts["config"], parts["vocab"], parts["extra"])
    with atomic_write(out / "config.json") as handle:
        json.dump({"model": parts["config"], "train": parts["extra"]["hyper"], "imported": {
            key: parts["extra"][key] for key in ("source", "source_checkpoint", "source_vocab", "epoch",
                                                 "best_rsum", "Eiters")}}, handle, indent=2)
    config, extra = parts["config"], parts["extra"]
    print(f"imported SGRAF {config['head'].upper()} (embed {config['embed_size']}, sim {config['sim_dim']}, "
          f"{config['vocab_size']} words, region-slot BatchNorm over {config['image_norm_slots']}) from epoch "
          f"{extra['epoch']}, SGRAF's best dev rsum {extra['best_rsum']}")
    print(f"wrote {best}")
    return 0
