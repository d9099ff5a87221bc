"""`temde prepare folder|openclipart|emoji|icons|all`: build a precomp data set from images and their captions.

Writes region features, captions, the vocabulary, leakage-free splits and a manifest into one folder."""
from __future__ import annotations

import argparse


def _common(parser: argparse.ArgumentParser, dev: int | None, test: int | None) -> None:
    parser.add_argument("--out", required=True, help="output folder for {train,dev,test}_ims.npy/_caps.txt, "
                                                     "vocab.json and manifest.json (a new or empty folder, or "
                                                     "one this command prepared)")
    parser.add_argument("--force", action="store_true",
                        help="replace a data set that --out holds from another run of this command with other "
                             "settings (a folder holding anything else is never written into)")
    parser.add_argument("--dev", type=int, default=dev,
                        help="dev images; default " + ("%(default)s" if dev is not None else "see above"))
    parser.add_argument("--test", type=int, default=test,
                        help="test images; default " + ("%(default)s" if test is not None else "see above"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the split; default %(default)s")
    parser.add_argument("--cache", default=None,
                        help="cache folder for downloads and image features (default $TEMDE_CACHE or ~/.cache/temde)")
    parser.add_argument("--no-feature-cache", action="store_true", help="do not read or write cached features")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per network batch; default %(default)s")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads; default %(default)s")
    parser.add_argument("--resolution", type=int, choices=(224, 448, 896), default=224,
                        help="pixels per image side: the region grid is 7x7 = 49 at 224, 14x14 = 196 at 448, "
                             "28x28 = 784 at 896 (same encoder, cached separately); default %(default)s")


def register(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="build a data set (features, captions, splits) from images",
                                   description=__doc__.splitlines()[0])
    sources = parser.add_subparsers(dest="source", metavar="SOURCE")
    sources.required = True

    folder = sources.add_parser(
        "folder", help="a folder of images + a TSV of image_file<TAB>caption lines",
        description="Images of a folder with captions from a TSV (image_file<TAB>caption, several lines per image "
                    "allowed, paths relative to --images). Every image gets k captions, k = the most common count.")
    folder.add_argument("--images", required=True, help="folder holding the images")
    folder.add_argument("--captions", required=True, help="TSV file: image_file<TAB>caption per line")
    folder.add_argument("--captions-per-image", type=int, default=None,
                        help="captions kept per image, k (default: the most common number of captions per image)")
    _common(folder, dev=100, test=100)
    folder.set_defaults(run=run_folder)

    clipart = sources.add_parser(
        "openclipart", help="public-domain clip art (Debian openclipart-svg/-png), captioned from its metadata",
        description="Uses /usr/share/openclipart if installed, else `apt-get download`s the two Debian packages "
                    "(~156 MB) into the cache. Default --dev/--test: 500 each, or limit/10 each with --limit.")
    clipart.add_argument("--limit", type=int, default=None,
                         help="use a fixed subset of N images, for quick runs (default: all, ~3,100)")
    clipart.add_argument("--root", default=None,
                         help="an extracted openclipart folder (svg/ + png/) to use (default: the system install, "
                              "else the download in the cache)")
    clipart.add_argument("--max-title-repeats", type=int, default=None,
                         help="drop titles shared by more images than this as boilerplate (default: 10)")
    clipart.add_argument("--captions", choices=("joined", "separate"), default="joined",
                         help="joined: one caption per image, 'title. description. keywords' (the demo's data); "
                              "separate: title, description and specific keywords as separate captions of the image, "
                              "one test image per group, default --dev 250 --test 500 (temde.data.sources."
                              "openclipart_captions); default %(default)s")
    _common(clipart, dev=None, test=None)
    clipart.set_defaults(run=run_openclipart)

    from temde.cli.prepare_sources import register_sources
    register_sources(sources, _common)


def _extractor(args):
    import torch

    from temde.features import FeatureExtractor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    feature_cache = None if args.no_feature_cache else _cache_root(args) / "features"
    return FeatureExtractor(device=device, batch_size=args.batch_size, cache_dir=feature_cache, workers=args.workers,
                            image_size=args.resolution)


def _cache_root(args):
    from pathlib import Path

    from temde.features import default_cache_root

    return Path(args.cache).expanduser() if args.cache else default_cache_root()


def _check_sizes(dev: int, test: int) -> None:
    from temde.errors import TemdeError

    if dev < 0 or test < 0:
        raise TemdeError(f"--dev and --test must be >= 0, got {dev} and {test}")


def run_folder(args) -> int:
    from temde.data.sources.folder import prepare_folder

    _check_sizes(args.dev, args.test)
    manifest = prepare_folder(args.images, args.captions, args.out, n_dev=args.dev, n_test=args.test,
                              seed=args.seed, extractor=_extractor(args), captions_per_image=args.captions_per_image,
                              force=args.force)
    print(f"wrote {args.out} ({manifest['grouping']['merged_groups']} merged groups)")
    return 0


def run_openclipart(args) -> int:
    from temde.data.sources.openclipart import DEFAULT_DEV, DEFAULT_TEST, MAX_TITLE_REPEATS, prepare_openclipart
    from temde.errors import TemdeError

    if args.limit is not None and args.limit < 3:
        raise TemdeError(f"--limit must be >= 3 (train, dev and test need an image each), got {args.limit}")
    if getattr(args, "captions", "joined") == "separate":
        from temde.cli.prepare_sources import run_openclipart_separate
        return run_openclipart_separate(args, args.dev, args.test)
    share = max(1, args.limit // 10) if args.limit is not None else None
    dev = args.dev if args.dev is not None else (share or DEFAULT_DEV)
    test = args.test if args.test is not None else (share or DEFAULT_TEST)
    _check_sizes(dev, test)
    manifest = prepare_openclipart(
        args.out, _cache_root(args), extractor=_extractor(args), limit=args.limit, n_dev=dev, n_test=test,
        seed=args.seed, root=args.root, force=args.force,
        max_title_repeats=args.max_title_repeats if args.max_title_repeats is not None else MAX_TITLE_REPEATS)
    print(f"wrote {args.out} ({manifest['grouping']['merged_groups']} merged groups)")
    return 0
