"""`temde eval`: R@K and rsum of one checkpoint, or of an ensemble (score matrices averaged, as SGRAF = SAF + SGR)."""
from __future__ import annotations

import argparse
import json
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", aliases=["evaluate"], help="evaluate checkpoints on a precomp split",
                              description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True, metavar="PT",
                   help="a best.pt/last.pt; repeat it to average the score matrices of several models")
    p.add_argument("--data", required=True, help="precomp folder")
    p.add_argument("--split", default="test", help="split name (default test; COCO 1K/5K: testall)")
    folds = p.add_mutually_exclusive_group()
    folds.add_argument("--fold5", action="store_true", help="mean over 5 folds of the images (COCO 1K)")
    folds.add_argument("--folds", type=int, help="mean over this many folds (default: the whole split at once)")
    p.add_argument("--json", metavar="OUT", help="also write the metrics as JSON")
    p.add_argument("--two-stage", action="store_true",
                   help="also evaluate two-stage retrieval (global-vector short list, model re-rank) and time it")
    p.add_argument("--rerank", type=int, default=100, help="short-list size of --two-stage (default 100)")
    p.add_argument("--global-score", type=_weight, metavar="W",
                   help="score with W x the cosine of the global vectors added to the head's score, instead of the "
                        "weight each checkpoint was trained with (re-weighting needs no retraining; choose W on dev; "
                        "default: each checkpoint's own weight)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=128, help="encoding batch size; default %(default)s")
    # Block defaults live in temde.scoring (imported lazily: the CLI starts without torch).
    p.add_argument("--image-block", type=int, help="images per scoring block (default 64; larger is faster on a GPU)")
    p.add_argument("--caption-block", type=int, help="captions per scoring block (default 32)")
    p.set_defaults(run=run)


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def score_blocks(image_block: int | None, caption_block: int | None) -> tuple[int, int]:
    """The score-matrix blocks to use: the given ones, temde.scoring's defaults where None."""
    from temde.scoring import CAPTION_BLOCK, IMAGE_BLOCK

    return (IMAGE_BLOCK if image_block is None else image_block,
            CAPTION_BLOCK if caption_block is None else caption_block)


def restore_scorer(checkpoint: dict, device, global_score: float | None = None):
    """The checkpoint's model in eval mode; `global_score` (when given) replaces its config's weight."""
    from temde.training.checkpoint import restore_model

    model = restore_model(checkpoint, device)
    if global_score is not None:
        model.config.global_score = global_score
    return model


def ensemble_scores(checkpoints: list[str], split, device, batch_size: int = 128, image_block: int | None = None,
                    caption_block: int | None = None, global_score: float | None = None):
    """Mean score matrix `[n_images, n_captions]` of the checkpoints on a PrecompSplit."""
    from temde.errors import DataError
    from temde.scoring import encode_split, score_matrix
    from temde.training.checkpoint import load_checkpoint, restore_vocab

    total = None
    for path in checkpoints:
        checkpoint = load_checkpoint(path)
        img_dim = checkpoint["config"].get("img_dim")
        if img_dim != split.images.shape[2]:
            raise DataError(f"{split.image_path or split.name}: features have {split.images.shape[2]} dims but "
                            f"{path} was trained on {img_dim}")
        model = restore_scorer(checkpoint, device, global_score)
        img, cap = encode_split(model, split, restore_vocab(checkpoint), batch_size, device)
        sims = score_matrix(model, img, cap, *score_blocks(image_block, caption_block), device)
        total = sims.astype("float64") if total is None else total + sims
        del model
    return total / len(checkpoints)


def run(args: argparse.Namespace) -> int:
    import torch

    from temde.data import load_split
    from temde.data.vocab import atomic_write
    from temde.errors import TemdeError
    from temde.evaluation import chance_rsum, evaluate, evaluate_folds, format_metrics

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split = load_split(args.data, args.split)
    if args.two_stage:
        return run_two_stage(args, split, device)
    sims = ensemble_scores(args.checkpoint, split, device, args.batch_size, args.image_block, args.caption_block,
                           args.global_score)
    k = split.layout  # k captions per image, or the caption->image index of a {split}_cap2img.npy
    folds = 5 if args.fold5 else args.folds
    try:
        if folds:
            result = evaluate_folds(sims, k, folds)
            per_fold = result.pop("folds")
        else:
            result, per_fold = evaluate(sims, k), None
    except ValueError as exc:  # e.g. images that do not split into equal folds
        raise TemdeError(str(exc)) from None
    n_eval = split.n_images // folds if folds else split.n_images
    per_image = f"x {k} captions" if split.caption_images is None else f"and {split.n_captions} captions"
    label = f"{split.name}: {split.n_images} images {per_image}" + (f", mean of {folds} folds" if folds else "")
    print(f"{label} ({len(args.checkpoint)} checkpoint{'s' if len(args.checkpoint) > 1 else ''})")
    print(format_metrics(result))
    if per_fold:
        print("rsum per fold: " + ", ".join(f"{m['rsum']:.1f}" for m in per_fold))
    print(f"chance rsum: {chance_rsum(n_eval, k):.1f}")
    if args.json:
        report = {"checkpoints": args.checkpoint, "data": str(args.data), "split": split.name,
                  "global_score": args.global_score,
                  "n_images": split.n_images, "n_captions": split.n_captions,
                  "captions_per_image": split.captions_per_image, "folds": folds, "metrics": result,
                  "per_fold": per_fold, "chance_rsum": chance_rsum(n_eval, k)}
        with atomic_write(args.json) as handle:
            json.dump(report, handle, indent=2)
    return 0


def run_two_stage(args: argparse.Namespace, split, device) -> int:
    """Two-stage recall and wall time next to full scoring, for one checkpoint."""
    from temde.data.vocab import atomic_write
    from temde.errors import TemdeError
    from temde.evaluation import format_metrics
    from temde.index.two_stage import two_stage_evaluate
    from temde.training.checkpoint import load_checkpoint, restore_vocab

    if len(args.checkpoint) != 1:
        raise TemdeError("--two-stage evaluates one checkpoint (an ensemble has no single global vector)")
    if args.rerank < 1:
        raise TemdeError(f"--rerank must be >= 1, got {args.rerank}")
    checkpoint = load_checkpoint(args.checkpoint[0])
    model = restore_scorer(checkpoint, device, args.global_score)
    folds = 5 if args.fold5 else args.folds
    image_block, caption_block = score_blocks(args.image_block, args.caption_block)
    try:
        result = two_stage_evaluate(model, split, restore_vocab(checkpoint), args.rerank, device, args.batch_size,
                                    folds=folds, image_block=image_block, caption_block=caption_block)
    except ValueError as exc:
        raise TemdeError(str(exc)) from None
    print(f"{split.name}: {split.n_images} images, two-stage with short lists of {args.rerank}")
    print("full scoring:  " + format_metrics(result["full"]).replace("\n", "\n               "))
    print("two-stage:     " + format_metrics(result).replace("\n", "\n               "))
    print(f"rsum {result['rsum']:.1f} vs {result['full']['rsum']:.1f} full "
          f"({100 * (result['rsum'] / result['full']['rsum'] - 1):+.1f} %); short lists hold the true item for "
          f"{result['t2i_shortlist_recall']:.1f} % of text queries, {result['i2t_shortlist_recall']:.1f} % of image "
          f"queries; scoring {result['full_seconds']:.2f} s full vs {result['two_stage_seconds']:.2f} s two-stage "
          f"({result['speedup']:.1f}x, encoding excluded)")
    if args.json:
        with atomic_write(args.json) as handle:
            json.dump({"checkpoint": args.checkpoint[0], "data": str(args.data), "split": split.name,
                       "two_stage": {k: v for k, v in result.items() if k != "folds"}}, handle, indent=2)
    return 0
