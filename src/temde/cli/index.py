"""`temde index build` and `temde search`: FAISS index of global vectors, short list re-ranked by the model."""
from __future__ import annotations

import argparse
import json


def _int_at_least(minimum: int, wording: str):
    """An argparse type: an integer >= minimum, else an error that says what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wording}, got {value}")
        return value
    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


def register(subparsers) -> None:
    index = subparsers.add_parser("index", help="build a FAISS index of a split's global vectors",
                                  description="FAISS indexes of the pooled global vectors of a split")
    index_sub = index.add_subparsers(dest="index_command", metavar="ACTION")
    index_sub.required = True
    build = index_sub.add_parser("build", help="encode a split with a checkpoint and index its global vectors",
                                 description="Encode a split of a precomp folder with a trained checkpoint and write "
                                             "a FAISS index of its global vectors (images, and captions) for "
                                             "`temde search`.")
    build.add_argument("--checkpoint", required=True, help="trained model (RUN/best.pt)")
    build.add_argument("--data", required=True, help="precomp folder")
    build.add_argument("--split", default="test", help="split to index (default test)")
    build.add_argument("--out", required=True,
                       help="index directory to write (a new or empty folder, or one this command built)")
    build.add_argument("--force", action="store_true",
                       help="replace an index that --out holds from another checkpoint, data set or options")
    build.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default="flat",
                       help="flat: exact inner product; ivf / hnsw: approximate, for large galleries; "
                            "default %(default)s")
    build.add_argument("--nlist", type=_positive, help="IVF lists (default ~4 sqrt(n), >= 39 vectors per list)")
    build.add_argument("--nprobe", type=_positive, help="IVF lists visited per query (default max(8, nlist/16))")
    build.add_argument("--hnsw-m", type=_positive, default=32, help="HNSW neighbours per node; default %(default)s")
    build.add_argument("--ef-construction", type=_positive, default=80,
                       help="HNSW build candidates; default %(default)s")
    build.add_argument("--ef-search", type=_positive, default=64, help="HNSW search candidates; default %(default)s")
    build.add_argument("--no-captions", action="store_true", help="index the images only")
    build.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...; default %(default)s")
    build.add_argument("--batch-size", type=_positive, default=128,
                       help="items per encoding batch; default %(default)s")
    build.set_defaults(run=run_build)

    search = subparsers.add_parser("search", help="search an index: images for a caption, captions for an image",
                                   description="Search an index built by `temde index build`.")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", help="caption to search images for")
    query.add_argument("--image", type=int, metavar="ID", help="image id of the indexed split to search captions for")
    search.add_argument("--index", required=True, help="index directory")
    search.add_argument("-k", type=_positive, default=10, help="results to show (default 10)")
    search.add_argument("--rerank", type=_non_negative, default=0, metavar="K",
                        help="re-score the top K of the first stage with the full model (default 0: cosine only)")
    search.add_argument("--checkpoint", help="model checkpoint (default: the one recorded in the index; it must be "
                                             "the model that built the index)")
    search.add_argument("--data", help="precomp folder (default: the one recorded in the index)")
    search.add_argument("--nprobe", type=_positive, help="IVF: lists visited per query (default: the index's)")
    search.add_argument("--ef-search", type=_positive, help="HNSW: search candidates (default: the index's)")
    search.add_argument("--html", metavar="OUT", help="also write the results as an HTML page")
    search.add_argument("--html-images", choices=("relative", "absolute", "inline"), default="relative",
                        help="how the page refers to image files: relative/absolute paths or inline data URIs "
                             "(a page that travels); default %(default)s")
    search.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    search.add_argument("--no-verify", action="store_true",
                        help="skip the sha256 check of the index files (multi-GB indexes)")
    search.add_argument("--device", default="cpu", help="device of the model (re-ranking); default %(default)s")
    search.set_defaults(run=run_search)


def run_build(args: argparse.Namespace) -> int:
    from temde.index.store import IndexOptions
    from temde.index.two_stage import build_index

    options = IndexOptions(args.kind, args.nlist, args.nprobe, args.hnsw_m, args.ef_construction, args.ef_search)
    built = build_index(args.checkpoint, args.data, args.split, args.out, options, args.device, args.batch_size,
                        captions=not args.no_captions, force=args.force)
    counts = ", ".join(f"{len(part)} {name}" for name, part in built.parts.items())
    print(f"wrote {args.out}: {counts}, {built.meta['dim']}-d, {args.kind}")
    return 0


def _split_or_none(searcher):
    """The indexed split if its data folder still holds it (captions and image files shown next to the hits)."""
    import sys

    from temde.errors import DataError

    try:
        return searcher.split
    except DataError as exc:
        print(f"note: showing ids only: {exc}", file=sys.stderr)
        return None


def run_search(args: argparse.Namespace) -> int:
    import sys

    from temde.data.tokenizer import tokenize
    from temde.index.html import image_problems, read_manifest, write_search_page
    from temde.index.two_stage import QueryError, Searcher, unknown_words

    # Before loading anything: fail fast. The vocabulary (and so its tokenizer) is not read yet; NLTK's tokenizer
    # makes a token of any non-blank text, so this refuses only a query that no vocabulary could read.
    if args.query is not None and not tokenize(args.query, "nltk"):
        raise QueryError(f"--query: empty query {args.query!r}; give at least one word")
    searcher = Searcher.open(args.index, args.checkpoint, args.data, args.device, verify=not args.no_verify)
    for part in searcher.index.parts.values():
        part.set_search_options(args.nprobe, args.ef_search)
    meta = searcher.index.meta
    notices = []  # said on stderr, and at the top of the --html page
    if args.query is not None:
        missing = unknown_words(args.query, searcher.vocab)
        if missing and len(missing) == len(searcher.vocab.tokenize(args.query)):
            notices.append(f"None of the query's words is in the model's vocabulary ({', '.join(missing)}): every "
                           f"word reads as <unk>, so the results say nothing about what was asked.")
            print(f"warning: {notices[-1]}", file=sys.stderr)
        elif missing:
            print(f"note: not in the model's vocabulary (read as <unk>): {', '.join(missing)}", file=sys.stderr)
        hits = searcher.search_text(args.query, args.k, args.rerank)
    else:
        hits = searcher.search_image(args.image, args.k, args.rerank)
    split = _split_or_none(searcher)
    from temde.data.precomp import captions_of_image, image_of_caption

    k = meta["captions_per_image"] if split is None else split.layout  # k, or a caption->image index
    how = f"re-ranked top {args.rerank} by the model" if args.rerank else "cosine of global vectors"
    subtitle = f"index {args.index}: {meta['split']} split, {meta['files']['images']['count']} images, " \
               f"{meta['kind']}; {how}"
    print(subtitle)
    header = f"{'score':>8}  {'cosine':>7}" if args.rerank else f"{'cosine':>7}"

    def scores(hit) -> str:
        return f"{hit.score:8.4f}  {hit.cosine:7.4f}" if args.rerank else f"{hit.cosine:7.4f}"

    if args.query is not None:
        print(f"{'rank':>4}  {'image':>6}  {header}  first caption of the image")
        for hit in hits:
            caption = split.captions[captions_of_image(k, hit.item)[0]] if split is not None else ""
            print(f"{hit.rank:>4}  {hit.item:>6}  {scores(hit)}  {caption}")
    else:
        print(f"{'rank':>4}  {'caption':>7}  {'image':>6}  {header}  text (* = a caption of the query image)")
        for hit in hits:
            image = image_of_caption(k, hit.item)
            mark = " *" if image == args.image else ""
            print(f"{hit.rank:>4}  {hit.item:>7}  {image:>6}  {scores(hit)}  {split.captions[hit.item]}{mark}")
    if args.json:
        from temde.data.vocab import atomic_write

        record = {"query": args.query, "image": args.image, "index": str(args.index), "rerank": args.rerank,
                  "hits": [hit.__dict__ for hit in hits]}
        with atomic_write(args.json) as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
        print(f"wrote {args.json}")
    if args.html:
        files = None if split is None else read_manifest(searcher.data_dir, meta["split"], meta["counts"]["images"])
        shown = [hit.item for hit in hits] if args.query is not None else [args.image]
        if split is None:
            problem = "Images are shown by id only: the index's data folder no longer holds its split."
        else:
            problem = image_problems(shown, files, args.html, args.html_images, searcher.data_dir)
        if problem:
            notices.append(problem)
            print(f"warning: {problem}", file=sys.stderr)
        write_search_page(args.html, hits, query_text=args.query, query_image=args.image,
                          captions=None if split is None else split.captions, captions_per_image=k,
                          image_files=files, mode=args.html_images, subtitle=subtitle, notice=" ".join(notices))
        print(f"wrote {args.html}: {len(hits)} results, " + ("images missing (see the warning above)" if problem
                                                              else "with their images"))
    return 0
