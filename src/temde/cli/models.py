"""`temde models [NAME]`: list the model presets, or print one preset as JSON."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list model presets (or show one)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="a preset to print in full (JSON)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from temde.models.registry import list_models, load_preset

    if args.name:
        print(json.dumps(load_preset(args.name), indent=2))
        return 0
    rows = [("name", "head", "pooling", "img_dim", "embed", "sim_dim", "epochs", "description")]
    for name in list_models():
        preset = load_preset(name)
        model, train = preset["model"], preset["train"]
        rows.append((name, model["head"], model["pooling"], str(model["img_dim"]), str(model["embed_size"]),
                     str(model.get("sim_dim", "-")), f"{train['epochs']}/{train['lr_update']}", preset["description"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0
