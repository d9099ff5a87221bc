"""A bounded load test of `temde serve`: N concurrent clients send a fixed number of text queries, then stop.

Only loopback addresses are accepted: this measures the service on this machine, it is not a tool to point at
other people's servers. Each client keeps one HTTP/1.1 connection and takes the next query number from a shared
counter until the budget is spent, so the run ends by itself whatever the server does (a failed request counts
as an error and is not retried). Latency is per request as the client sees it; qps is answered queries over the
wall time of the whole run.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from temde.serve.server import LOOPBACK_HOSTS


@dataclass
class LoadResult:
    clients: int
    queries: int
    k: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    server_total_ms: float  # mean of the server's own timing_ms.total (queueing behind the model lock included)
    responses: list[dict[str, Any] | None] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "responses"}


def run_load_test(url: str, texts: list[str], clients: int = 8, queries: int = 2000, k: int = 10,
                  timeout: float = 60.0, keep_responses: bool = False) -> LoadResult:
    """Send `queries` searches (texts cycled) from `clients` threads to the server at `url` (loopback only)."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"the load test only targets this machine (127.0.0.1, localhost, ::1), got {url!r}")
    if clients < 1 or queries < 1 or not texts:
        raise ValueError("need clients >= 1, queries >= 1 and at least one query text")
    host, port = parts.hostname, parts.port or 80
    counter, lock = itertools.count(), threading.Lock()
    latencies = np.full(queries, np.nan)
    server_ms = np.full(queries, np.nan)
    responses: list[dict[str, Any] | None] = [None] * queries if keep_responses else []
    errors = [0] * clients

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            while True:
                with lock:
                    i = next(counter)
                if i >= queries:
                    return
                target = f"/api/search?q={quote(texts[i % len(texts)])}&k={k}"
                start = time.perf_counter()
                try:
                    connection.request("GET", target)
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException):
                    errors[number] += 1
                    connection.close()  # a fresh connection for the next query
                    continue
                latencies[i] = 1000 * (time.perf_counter() - start)
                if response.status != 200:
                    errors[number] += 1
                    continue
                answer = json.loads(body)
                server_ms[i] = answer["timing_ms"]["total"]
                if keep_responses:
                    responses[i] = answer
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(n,), name=f"load-client-{n}") for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    answered = latencies[~np.isnan(latencies)]
    failed = sum(errors)

    def stat(values: np.ndarray, fn) -> float:
        return float(fn(values)) if len(values) else float("nan")

    return LoadResult(clients, queries, k, seconds, (queries - failed) / seconds,
                      stat(answered, lambda v: np.percentile(v, 50)), stat(answered, lambda v: np.percentile(v, 99)),
                      stat(answered, np.mean), stat(answered, np.max), failed,
                      stat(server_ms[~np.isnan(server_ms)], np.mean), responses)


def query_texts(index: str | os.PathLike, data_dir: str | os.PathLike | None = None, limit: int = 1000) -> list[str]:
    """Realistic queries: the indexed split's own captions (without loading a model)."""
    from temde.data.precomp import load_split
    from temde.index.store import read_meta

    meta = read_meta(index)
    split = load_split(data_dir or meta["data_dir"], meta["split"], validate=False)
    return [caption[:500] for caption in split.captions[:limit]]


def start_server_process(args: list[str], timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    """`temde serve ARGS --host 127.0.0.1 --port 0` in a child process (its own interpreter, so the clients'
    threads do not share the server's GIL); returns the process and the URL it printed."""
    command = [sys.executable, "-m", "temde", "serve", *args, "--host", "127.0.0.1", "--port", "0", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip())
        found = re.search(r"\bat (http://\S+/)", line) if line.startswith("serving ") else None
        if found:
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep draining its output
            return process, found.group(1)
    process.kill()
    process.wait()
    raise RuntimeError("temde serve did not start:\n" + "\n".join(seen[-10:]))


def load_test_index(index: str | os.PathLike, serve_args: list[str], clients: int = 8, queries: int = 2000,
                    k: int = 10, warmup: int = 20, data_dir: str | os.PathLike | None = None,
                    log=print) -> LoadResult:
    """Start `temde serve` on the index on 127.0.0.1, warm it up, run the load test, stop the server."""
    texts = query_texts(index, data_dir)
    process, url = start_server_process(["--index", str(Path(index)), *serve_args])
    try:
        log(f"server at {url}; {warmup} warm-up queries, then {queries} queries from {clients} clients")
        run_load_test(url, texts, 1, warmup, k)
        return run_load_test(url, texts[::-1], clients, queries, k)  # not the warm-up's order
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
