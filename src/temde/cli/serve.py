"""`temde serve`: a local search page and JSON API over an index (model and index loaded once)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from temde.cli.index import _int_at_least, _non_negative, _positive


def _port(text: str) -> int:
    value = _int_at_least(0, "a port number in [0, 65535]")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in [0, 65535], got {value}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="search page + JSON API over an index: type a caption, see images; click one, see captions",
        description="Serve an index built by `temde index build` as a web page and a JSON API "
                    "(/api/search?q=&k=, /api/image/ID?k=, POST /api/image, /api/health).")
    p.add_argument("--index", required=True, help="index directory (`temde index build --out`)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--rerank", type=_non_negative, default=0, metavar="K",
                   help="re-score the top K of the first stage with the full model (default 0: cosine only)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the one recorded in the index)")
    p.add_argument("--data", help="precomp folder (default: the one recorded in the index)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the index files")
    p.add_argument("--no-upload", action="store_true", help="do not accept uploaded pictures")
    p.add_argument("--max-upload-mb", type=_positive, default=16, help="largest upload accepted (default 16 MB)")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    load = p.add_argument_group("load test (starts the server on 127.0.0.1, measures, stops)")
    load.add_argument("--load-test", action="store_true",
                      help="instead of serving: send --queries text queries (the split's captions) from --clients "
                           "concurrent clients and print qps and latency percentiles")
    load.add_argument("--clients", type=_positive, default=8, help="concurrent clients (default 8)")
    load.add_argument("--queries", type=_positive, default=2000, help="queries in all (default 2000)")
    load.add_argument("-k", type=_positive, default=10, help="results per load-test query (default 10)")
    load.add_argument("--json", metavar="OUT", help="also write the load-test figures as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.load_test:
        return run_load_test(args)
    from temde.serve import ServeError, open_engine
    from temde.serve.server import LOOPBACK_HOSTS, Limits, make_server

    engine = open_engine(args.index, args.checkpoint, args.data, args.device, args.rerank,
                         verify=not args.no_verify, uploads=not args.no_upload)
    try:
        server = make_server(engine, args.host, args.port, Limits(max_upload_bytes=args.max_upload_mb << 20),
                             quiet=args.quiet)
    except OSError as exc:
        raise ServeError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None
    if args.host not in LOOPBACK_HOSTS:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can query the index",
              file=sys.stderr)
    health = engine.health()
    how = f"re-ranking the top {health['rerank']}" if health["rerank"] else "cosine only"
    # Printed last and flushed: `temde serve --load-test` and tests read the URL from this line.
    print(f"serving {args.index} ({health['images']} images, {health['captions']} captions, {how}) "
          f"at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def machine() -> str:
    """Where the figures were measured: CPU model and cores, the load on it, the torch build and its threads."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores{load}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def run_load_test(args: argparse.Namespace) -> int:
    from temde.serve.load import load_test_index

    serve_args = ["--rerank", str(args.rerank), "--device", args.device, "--no-upload"]
    for flag, value in (("--checkpoint", args.checkpoint), ("--data", args.data)):
        if value:
            serve_args += [flag, value]
    if args.no_verify:
        serve_args.append("--no-verify")
    result = load_test_index(args.index, serve_args, args.clients, args.queries, args.k, data_dir=args.data)
    print(f"{result.queries} queries, {result.clients} clients, k={result.k}, rerank={args.rerank}: "
          f"{result.qps:.1f} queries/s, latency p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
          f"mean {result.mean_ms:.1f} ms, max {result.max_ms:.1f} ms; server-side mean {result.server_total_ms:.1f} "
          f"ms; {result.errors} errors; {result.seconds:.1f} s")
    if args.json:
        from temde.data.vocab import atomic_write

        record = {**result.summary(), "rerank": args.rerank, "index": str(args.index),
                  "command": "temde " + " ".join(getattr(args, "argv", None) or ["serve", "..."]),
                  "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine()}
        with atomic_write(args.json) as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
        print(f"wrote {args.json}")
    return 1 if result.errors else 0
