"""`temde prepare emoji | icons | all`, and `temde prepare openclipart --captions separate`: the multi-caption
sources (temde.data.sources.combined). Registered by temde.cli.prepare, whose common options they share."""
from __future__ import annotations

import argparse

_SPLITS = ("--dev and --test count images per source, one image per concept group; the other drawings of a "
           "held-out concept are not used. --workers is also the number of SVG rendering processes. See "
           "docs/data.md.")


def _source_options(parser: argparse.ArgumentParser, limit_what: str) -> None:
    parser.add_argument("--limit", type=int, default=None,
                        help=f"use a fixed subset of N {limit_what} per source, for quick runs (default: all)")


def register_sources(sources, common) -> None:
    """Add the emoji, icons and all sub-commands; `common` adds prepare's shared options (--out, --dev, ...)."""
    from temde.data.sources.multicaption import DEFAULT_DEV, DEFAULT_TEST

    single = (
        ("emoji", "emoji drawn by 9 vendors (npm Iconify sets), captioned by CLDR names/keywords + emojilib",
         "Emoji of several vendors matched by code point (skin-tone variants dropped), up to three human texts each "
         "(CLDR name, CLDR keywords, emojilib keywords), rendered with cairosvg (needs libcairo2). Pinned npm "
         "packages are downloaded into the cache. "),
        ("icons", "icon sets with names and tags (tabler, lucide, Font Awesome, Phosphor, Carbon, game-icons)",
         "Icons of six npm icon sets (brand logos dropped), two captions each: the name in words and the tag list; "
         "rendered with cairosvg (needs libcairo2). "),
    )
    for name, summary, description in single:
        parser = sources.add_parser(name, help=summary, description=description + _SPLITS)
        _source_options(parser, "concepts")
        common(parser, dev=DEFAULT_DEV, test=DEFAULT_TEST)
        parser.set_defaults(run=run_sources, sources=name)

    every = sources.add_parser(
        "all", help="emoji + icons + openclipart (separate captions) in one folder, a test split per source",
        description="One folder: train and dev of every source, test_<source> per source (test_emoji, "
                    "test_icons, test_openclipart); evaluate one with `temde eval --split test_emoji`. " + _SPLITS)
    every.add_argument("--sources", default="emoji,icons,openclipart",
                       help="comma-separated sources to include; default %(default)s")
    _source_options(every, "concepts (openclipart: images)")
    every.add_argument("--root", default=None,
                       help="an extracted openclipart folder (svg/ + png/) to use (default: the system install, "
                            "else the download in the cache)")
    common(every, dev=DEFAULT_DEV, test=DEFAULT_TEST)
    every.set_defaults(run=run_sources)


def run_sources(args) -> int:
    from temde.cli.prepare import _cache_root, _extractor
    from temde.data.sources.combined import prepare_sources

    sources = [s.strip() for s in str(args.sources).split(",") if s.strip()]
    manifest = prepare_sources(args.out, _cache_root(args), sources, extractor=_extractor(args), n_dev=args.dev,
                               n_test=args.test, seed=args.seed, limit=args.limit, workers=args.workers,
                               root=getattr(args, "root", None), force=args.force)
    _report(args.out, manifest)
    return 0


def run_openclipart_separate(args, dev: int | None, test: int | None) -> int:
    """`temde prepare openclipart --captions separate`: defaults 250 dev / 500 test (limit/10 with --limit)."""
    from temde.cli.prepare import _cache_root, _extractor
    from temde.data.sources.combined import prepare_sources
    from temde.data.sources.multicaption import DEFAULT_DEV, DEFAULT_TEST
    from temde.data.sources.openclipart import MAX_TITLE_REPEATS

    share = max(1, args.limit // 10) if args.limit is not None else None
    manifest = prepare_sources(
        args.out, _cache_root(args), ["openclipart"], extractor=_extractor(args),
        n_dev=dev if dev is not None else (share or DEFAULT_DEV),
        n_test=test if test is not None else (share or DEFAULT_TEST), seed=args.seed, limit=args.limit,
        workers=args.workers, root=args.root, force=args.force,
        max_title_repeats=args.max_title_repeats if args.max_title_repeats is not None else MAX_TITLE_REPEATS)
    _report(args.out, manifest)
    return 0


def _report(out, manifest: dict) -> None:
    for source, facts in manifest["sources"].items():
        splits = ", ".join(f"{name} {n:,}" for name, n in facts["splits"].items())
        print(f"{source}: {facts['images']:,} images, {facts['concepts']:,} concepts, {facts['captions']:,} captions;"
              f" images per split: {splits}")
    print(f"wrote {out} (splits: {', '.join(manifest['splits'])})")
