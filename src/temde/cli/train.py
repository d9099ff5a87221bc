"""`temde train`: train a SAF/SGR retrieval model with a chosen global pooling on a precomp folder.

Several GPUs (or CPU processes): launch the same command with torchrun, e.g.
`torchrun --nproc_per_node 4 -m temde train --data DIR --out RUN ...`; --batch-size stays the global batch.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from temde.errors import TemdeError


def _key_value(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE parsed as JSON when it is JSON (numbers, true/false, lists), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


PRESET = "default: the preset's (`temde models NAME` shows it)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a retrieval model (SAF/SGR + attention/temde/mha/mean pooling)",
                              description=__doc__.splitlines()[0],
                              epilog="A run folder is this command's own: a run already there needs --resume "
                                     "(continue it; its settings are checked) or --force (start over).")
    p.add_argument("--data", required=True, help="precomp folder with train_ims.npy/train_caps.txt and dev_*")
    p.add_argument("--out", required=True, help="run folder (last.pt, best.pt, epochs.csv, steps.csv)")
    p.add_argument("--model", default="saf-small",
                   help="a head (saf, sgr) or a preset (`temde models`); default %(default)s")
    p.add_argument("--init", metavar="PT",
                   help="start from this checkpoint (a run's best.pt, or one made by `temde import sgraf`): its "
                        "model and weights, with --pooling swapped in (a new pooling starts fresh, every other "
                        "weight is kept); --model then only supplies the training schedule (default: none)")
    from temde.pooling import list_pools

    p.add_argument("--pooling", help=f"global pooling: {' | '.join(list_pools())} ({PRESET})")
    p.add_argument("--pool-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="pooling option, e.g. n_bits=4 or temperature=0.5 (repeatable; default: none)")
    p.add_argument("--set", action="append", type=_key_value, default=[], metavar="KEY=VALUE", dest="model_set",
                   help="any other model config field, e.g. sim_dim=128 (repeatable; default: none)")
    p.add_argument("--embed-size", type=int, help=f"joint embedding size ({PRESET})")
    p.add_argument("--epochs", type=int, help=f"epochs to train ({PRESET}; saf-small: 14)")
    p.add_argument("--batch-size", type=int, help=f"global batch size, split across torchrun processes ({PRESET})")
    p.add_argument("--lr", type=float, help=f"learning rate ({PRESET}; SGRAF's 2e-4 for a plain head)")
    p.add_argument("--lr-update", type=int, help=f"epochs between lr x0.1 decays ({PRESET})")
    p.add_argument("--margin", type=float, help=f"hinge margin of the triplet loss ({PRESET}; SGRAF's 0.2)")
    p.add_argument("--grad-clip", type=float, help=f"gradient norm clip, <= 0 disables it ({PRESET}; SGRAF's 2)")
    negatives = p.add_mutually_exclusive_group()
    negatives.add_argument("--all-negatives", dest="max_violation", action="store_const", const=False,
                           help="sum the loss over all negatives (the small presets' default)")
    negatives.add_argument("--hardest-negatives", dest="max_violation", action="store_const", const=True,
                           help="VSE++ hardest negative per row and column (SGRAF's, the f30k/coco presets' default)")
    same = p.add_mutually_exclusive_group()
    same.add_argument("--mask-same-image", dest="mask_same_image", action="store_const", const=True,
                      help="a second caption of the same image in a batch is not a negative (the small presets)")
    same.add_argument("--no-mask-same-image", dest="mask_same_image", action="store_const", const=False,
                      help="every other caption in the batch is a negative, as SGRAF's loss (f30k/coco presets)")
    p.add_argument("--global-loss", type=float, default=None, metavar="W",
                   help="add W x the VSE++ loss on inner products of the global vectors (what the two-stage "
                        "index ranks by); default: the preset's (saf-small: 1.0, others: 0 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order; default %(default)s")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu); under torchrun "
                                    "each process takes cuda:LOCAL_RANK")
    p.add_argument("--workers", type=int, default=0,
                   help="data loader worker processes; default %(default)s (load in the main process)")
    folder = p.add_mutually_exclusive_group()
    folder.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last.pt; settings given again must be the run's, "
                             "except --epochs, which may extend it")
    folder.add_argument("--force", action="store_true", help="start over in --out, replacing the run there")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only; ignored on the CPU)")
    p.add_argument("--amp-dtype", choices=["bfloat16", "float16"], default="bfloat16",
                   help="--amp's precision; default %(default)s (float16 where bfloat16 is unsupported)")
    p.add_argument("--warmup-epochs", type=int, default=None, metavar="N",
                   help=f"sum over all negatives for the first N epochs, then hardest negatives ({PRESET})")
    p.add_argument("--word-vectors", metavar="glove|FILE",
                   help="initialise word embeddings: \"glove\" (packaged GloVe 6B 50d, sets word_dim=50) or a "
                        "GloVe-format text file (default: learned from scratch)")
    p.add_argument("--temperature-anneal", type=float, nargs=2, metavar=("START", "END"),
                   help="anneal T-EMDE temperatures geometrically over the epochs (default: fixed temperature)")
    p.add_argument("--log-every", type=int, default=50, help="steps between rows of steps.csv; default %(default)s")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard/ (if installed)")
    p.add_argument("--max-steps-per-epoch", type=int, metavar="N",
                   help="stop each epoch after N optimizer steps (quick trials; default: the whole train split)")
    p.add_argument("--train-subset", type=int, metavar="N",
                   help="train on the first N images only (default: all)")
    p.add_argument("--dev-subset", type=int, metavar="N",
                   help="evaluate on the first N dev images only (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.set_defaults(run=run)


def continue_command(argv: list[str]) -> str:
    """The command line that continues an interrupted run: the same arguments, --resume instead of --force."""
    import os
    import shlex

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "the same torchrun command with --resume added"
    args = [a for a in argv if a != "--force"]
    return shlex.join(["temde", *args, *([] if "--resume" in args else ["--resume"])])


def run(args: argparse.Namespace) -> int:
    import torch

    from temde.training.loop import TrainingInterrupted, TrainSettings, train

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = TrainSettings(
        data=args.data, out=args.out, model=args.model, init=args.init, pooling=args.pooling,
        pool_options=dict(args.pool_option) if args.pool_option else None, embed_size=args.embed_size,
        model_overrides=dict(args.model_set), epochs=args.epochs, lr=args.lr, lr_update=args.lr_update,
        batch_size=args.batch_size, margin=args.margin, grad_clip=args.grad_clip,
        max_violation=args.max_violation, mask_same_image=args.mask_same_image, warmup_epochs=args.warmup_epochs,
        global_loss=args.global_loss, seed=args.seed,
        workers=args.workers, device=device,
        resume=args.resume, amp=args.amp, amp_dtype=args.amp_dtype, log_every=args.log_every,
        tensorboard=args.tensorboard, progress=not args.quiet, max_steps_per_epoch=args.max_steps_per_epoch,
        train_subset=args.train_subset, dev_subset=args.dev_subset, word_vectors=args.word_vectors,
        temperature_anneal=tuple(args.temperature_anneal) if args.temperature_anneal else None, force=args.force,
    )
    try:
        settings.validate()
    except ValueError as exc:  # bad numbers on the command line: one line, like any user error
        raise TemdeError(str(exc)) from None
    try:
        result = train(settings)
    except TrainingInterrupted as exc:
        print("\ninterrupted", file=sys.stderr)
        if exc.saved_epoch:
            print(f"{exc}; continue with: {continue_command(args.argv)}", file=sys.stderr)
        else:
            print(f"{exc}; the same command starts the run again", file=sys.stderr)
        return 130
    if result["rank"] == 0:  # under torchrun every process returns here; one report is enough
        processes = f" x {result['world_size']} processes" if result["world_size"] > 1 else ""
        print(f"best dev rsum {result['best_rsum']:.1f} (chance {result['chance_rsum']:.1f}) at epoch "
              f"{result['best_epoch']} of {result['epochs']} ({result['train_seconds']:.0f} s training) on "
              f"{device}{processes}")
        print(f"checkpoints: {result['best_checkpoint']}, {result['last_checkpoint']}")
    return 0
