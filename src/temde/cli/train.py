"""`temde train`: train a SAF/SGR retrieval model with a chosen global pooling on a precomp folder.

Several GPUs (or CPU processes): launch the same command with torchrun, e.g.
`torchrun --nproc_per_node 4 -m temde train --data DIR --out RUN ...`; --batch-size stays the global batch.
"""
from __future__ import annotations

import argparse
import json
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a retrieval model (SAF/SGR + attention/temde/mha/mean pooling)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="precomp folder with train_ims.npy/train_caps.txt and dev_*")
    p.add_argument("--out", required=True, help="run folder (last.pt, best.pt, epochs.csv, steps.csv)")
    p.add_argument("--model", default="saf-small", help="a head (saf, sgr) or a preset (`temde models`); "
                                                        "default saf-small")
    p.add_argument("--init", metavar="PT",
                   help="start from this checkpoint (a run's best.pt, or one made by `temde import sgraf`): its "
                        "model and weights, with --pooling swapped in (a new pooling starts fresh, every other "
                        "weight is kept); --model then only supplies the training schedule")
    p.add_argument("--pooling", help="global pooling: attention | temde | mha | mean (default: the preset's)")
    p.add_argument("--pool-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="pooling option, e.g. n_bits=4 or temperature=0.5 (repeatable)")
    p.add_argument("--set", action="append", type=_key_value, default=[], metavar="KEY=VALUE", dest="model_set",
                   help="any other model config field, e.g. sim_dim=128 (repeatable)")
    p.add_argument("--embed-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    p.add_argument("--lr", type=float, help="learning rate (default 2e-4 or the preset's)")
    p.add_argument("--lr-update", type=int, help="epochs between lr x0.1 decays")
    p.add_argument("--margin", type=float)
    p.add_argument("--grad-clip", type=float)
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
    p.add_argument("--global-loss", type=float, default=0.0, metavar="W",
                   help="add W x the VSE++ loss on inner products of the global vectors (what the two-stage "
                        "index ranks by); default 0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu); under torchrun "
                                    "each process takes cuda:LOCAL_RANK")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--amp-dtype", choices=["bfloat16", "float16"], default="bfloat16")
    p.add_argument("--warmup-epochs", type=int, default=None, metavar="N",
                   help="sum over all negatives for the first N epochs, then hardest negatives (default: preset's)")
    p.add_argument("--word-vectors", metavar="glove|FILE",
                   help="initialise word embeddings: \"glove\" (packaged GloVe 6B 50d, sets word_dim=50) or a "
                        "GloVe-format text file")
    p.add_argument("--temperature-anneal", type=float, nargs=2, metavar=("START", "END"),
                   help="anneal T-EMDE temperatures geometrically over the epochs")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--train-subset", type=int, metavar="N", help="train on the first N images only")
    p.add_argument("--dev-subset", type=int, metavar="N", help="evaluate on the first N dev images only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from temde.training.loop import TrainSettings, train

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = TrainSettings(
        data=args.data, out=args.out, model=args.model, init=args.init, pooling=args.pooling,
        pool_options=dict(args.pool_option) if args.pool_option else None, embed_size=args.embed_size,
        model_overrides=dict(args.model_set), epochs=args.epochs, lr=args.lr, lr_update=args.lr_update,
        batch_size=args.batch_size, margin=args.margin, grad_clip=args.grad_clip,
        max_violation=args.max_violation, mask_same_image=args.mask_same_image, warmup_epochs=args.warmup_epochs, global_loss=args.global_loss, seed=args.seed,
        workers=args.workers, device=device,
        resume=args.resume, amp=args.amp, amp_dtype=args.amp_dtype, log_every=args.log_every,
        tensorboard=args.tensorboard, progress=not args.quiet, max_steps_per_epoch=args.max_steps_per_epoch,
        train_subset=args.train_subset, dev_subset=args.dev_subset, word_vectors=args.word_vectors,
        temperature_anneal=tuple(args.temperature_anneal) if args.temperature_anneal else None,
    )
    try:
        settings.validate()
    except ValueError as exc:  # bad numbers on the command line: one line, like any user error
        raise TemdeError(str(exc)) from None
    result = train(settings)
    if result["rank"] == 0:  # under torchrun every process returns here; one report is enough
        processes = f" x {result['world_size']} processes" if result["world_size"] > 1 else ""
        print(f"best dev rsum {result['best_rsum']:.1f} at epoch {result['best_epoch']} of {result['epochs']} "
              f"({result['train_seconds']:.0f} s training) on {device}{processes}")
        print(f"checkpoints: {result['best_checkpoint']}, {result['last_checkpoint']}")
    return 0
