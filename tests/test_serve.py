"""`temde serve`: the JSON API against direct Searcher calls, thumbnails by id, traversal, limits, uploads, load."""
from __future__ import annotations

import http.client
import io
import json
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from temde.cli import build_parser, main
from temde.data import Vocabulary, write_split
from temde.index.two_stage import Searcher, build_index
from temde.models import create_model
from temde.serve import open_engine
from temde.serve.load import run_load_test
from temde.serve.server import Limits, load_assets, make_server, start_in_thread
from temde.training.checkpoint import save_checkpoint

WORDS = "red green blue apple dog cat tree car house boat sun moon small big old".split()
N_IMAGES, REGIONS, IMG_DIM, K_CAPS = 24, 5, 12, 2
RERANK = 6


def colour(i: int) -> tuple[int, int, int]:
    """A distinct colour per image, so a thumbnail's pixels say which file was read."""
    return (20 + 9 * i, 240 - 7 * i, (60 * i) % 256)


def tiny_checkpoint(path: Path, vocab: Vocabulary, img_dim: int, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    model = create_model("saf-small", vocab_size=len(vocab), img_dim=img_dim, embed_size=16, sim_dim=8, word_dim=8)
    return save_checkpoint(path, model.state_dict(), model.config.to_dict(), vocab.to_json(), {"epoch": 1})


def build_tiny_index(root: Path, manifest: bool = True) -> Path:
    """A precomp folder (random features, captions from WORDS), its pictures in a separate folder named by the
    manifest's images_root (as `temde prepare` writes it), a tiny SAF checkpoint and a flat index. -> index dir."""
    rng = np.random.default_rng(5)
    data, pictures = root / "data", root / "pictures"
    captions = [" ".join(rng.choice(WORDS, 4)) for _ in range(N_IMAGES * K_CAPS)]
    write_split(data, "test", rng.standard_normal((N_IMAGES, REGIONS, IMG_DIM)).astype(np.float32), captions)
    vocab = Vocabulary.build(captions)
    vocab.save(data / "vocab.json")
    if manifest:
        pictures.mkdir()
        for i in range(N_IMAGES):
            Image.new("RGB", (60 + i, 40), colour(i)).save(pictures / f"p{i}.png")
        (data / "manifest.json").write_text(json.dumps(
            {"images_root": str(pictures), "splits": {"test": {"images": [f"p{i}.png" for i in range(N_IMAGES)]}}}))
    checkpoint = tiny_checkpoint(root / "model.pt", vocab, IMG_DIM)
    build_index(checkpoint, data, "test", root / "index", log=lambda *_: None)
    return root / "index"


@contextmanager
def serving(engine, limits: Limits = Limits()):
    server = make_server(engine, "127.0.0.1", 0, limits, quiet=True)
    start_in_thread(server)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) for a request whose path is sent exactly as given (no client-side normalising)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        if body is not None and "Content-Length" not in (headers or {}):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def get_json(server, path: str) -> tuple[int, dict]:
    status, _, body = request(server, "GET", path)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    index = build_tiny_index(root)
    engine = open_engine(index, rerank=RERANK, log=lambda *_: None)
    with serving(engine, Limits(max_upload_bytes=64 << 10)) as server:
        yield {"root": root, "index": index, "engine": engine, "server": server, "searcher": Searcher.open(index)}


# ------------------------------------------------------------------ the API against the Searcher

def test_health_reports_the_loaded_index(tiny):
    status, health = get_json(tiny["server"], "/api/health")
    assert status == 200
    assert (health["status"], health["images"], health["captions"]) == ("ok", N_IMAGES, N_IMAGES * K_CAPS)
    assert health["rerank"] == RERANK and health["thumbnails"] and health["captions_shown"]
    assert health["upload"] is False  # random features: no network of this package made them


@pytest.mark.parametrize("k", [1, 5])
def test_text_search_matches_a_direct_searcher_call(tiny, k):
    query = "red apple on a big boat"
    status, answer = get_json(tiny["server"], f"/api/search?q={quote(query)}&k={k}")
    assert status == 200 and answer["rerank"] == RERANK
    expected = tiny["searcher"].search_text(query, k=k, rerank=RERANK)
    assert [hit["id"] for hit in answer["results"]] == [h.item for h in expected]
    np.testing.assert_allclose([hit["score"] for hit in answer["results"]], [h.score for h in expected], atol=1e-5)
    np.testing.assert_allclose([hit["cosine"] for hit in answer["results"]], [h.cosine for h in expected], atol=1e-5)
    captions = tiny["searcher"].split.captions
    for hit in answer["results"]:
        assert hit["reranked"] and hit["image_url"] == f"/thumb/{hit['id']}"
        assert hit["captions"] == captions[hit["id"] * K_CAPS:(hit["id"] + 1) * K_CAPS]
    assert set(answer["timing_ms"]) >= {"encode", "first_stage", "rerank", "wait", "total"}
    assert all(v >= 0 for v in answer["timing_ms"].values())


def test_cosine_only_engine_matches_searcher_without_rerank(tiny):
    engine = open_engine(tiny["index"], rerank=0, uploads=False, log=lambda *_: None)
    answer = engine.search_text("green tree small cat", k=7)
    expected = tiny["searcher"].search_text("green tree small cat", k=7)
    assert [hit["id"] for hit in answer["results"]] == [h.item for h in expected]
    assert "rerank" not in answer["timing_ms"] and not any(hit["reranked"] for hit in answer["results"])


def test_per_query_encoding_gives_the_answers_of_the_pre_encoded_gallery(tiny):
    from temde.serve.engine import SearchEngine
    from temde.serve.gallery import gallery_for

    searcher = Searcher.open(tiny["index"])
    logged = []
    per_query = SearchEngine(searcher, gallery_for(searcher, log=logged.append), rerank=RERANK)
    per_query.pre_encode(budget_bytes=1, log=logged.append)  # too small: short lists are encoded per query
    assert per_query._images is None and any("per query" in line for line in logged)
    assert tiny["engine"]._images is not None  # the served engine re-ranks from its pre-encoded gallery
    for ask in (lambda e: e.search_text("big old house", 5), lambda e: e.search_image(11, 5)):
        mine, theirs = ask(per_query), ask(tiny["engine"])
        assert [hit["id"] for hit in mine["results"]] == [hit["id"] for hit in theirs["results"]]
        np.testing.assert_allclose([hit["score"] for hit in mine["results"]],
                                   [hit["score"] for hit in theirs["results"]], atol=1e-5)


def test_unknown_words_are_reported(tiny):
    _, answer = get_json(tiny["server"], "/api/search?q=red+zeppelin")
    assert answer["unknown_words"] == ["zeppelin"] and len(answer["results"]) == 10


def test_image_query_matches_searcher_and_similar_images_are_nearest_by_cosine(tiny):
    image_id, k = 3, 4
    status, answer = get_json(tiny["server"], f"/api/image/{image_id}?k={k}")
    assert status == 200
    expected = tiny["searcher"].search_image(image_id, k=k, rerank=RERANK)
    assert [hit["id"] for hit in answer["results"]] == [h.item for h in expected]
    np.testing.assert_allclose([hit["score"] for hit in answer["results"]], [h.score for h in expected], atol=1e-5)
    captions = tiny["searcher"].split.captions
    for hit in answer["results"]:
        assert hit["image_id"] == hit["id"] // K_CAPS and hit["caption"] == captions[hit["id"]]
        assert hit["match"] == (hit["image_id"] == image_id)
    # similar images: the cosine of the stored image vectors, by brute force, without the query image itself
    vectors = tiny["searcher"].index.images.vectors_by_id(np.arange(N_IMAGES)).astype(np.float64)
    cosine = vectors @ vectors[image_id]
    cosine[image_id] = -np.inf
    assert [hit["id"] for hit in answer["similar"]] == list(np.argsort(-cosine, kind="stable")[:k])
    assert answer["image"]["id"] == image_id and answer["image"]["image_url"] == f"/thumb/{image_id}"


# ------------------------------------------------------------------ thumbnails, the page

def test_thumbnails_are_served_by_id_from_the_manifest_files(tiny):
    for image_id in (0, 17):
        status, headers, body = request(tiny["server"], "GET", f"/thumb/{image_id}")
        assert status == 200 and headers["Content-Type"] == "image/png"
        picture = Image.open(io.BytesIO(body)).convert("RGB")
        assert picture.size == (256, 256)
        assert np.abs(np.array(picture.getpixel((128, 128))) - colour(image_id)).max() <= 2
    for path in (f"/thumb/{N_IMAGES}", "/thumb/-1", "/thumb/abc", "/thumb/1.png", "/thumb/"):
        status, _, body = request(tiny["server"], "GET", path)
        assert status == 404 and "error" in json.loads(body), path


def test_page_and_its_assets_ship_in_the_package(tiny):
    status, headers, body = request(tiny["server"], "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert b'<script src="/static/app.js"' in body and b'id="q"' in body
    for name, asset in load_assets().items():
        assert b"http://" not in asset and b"https://" not in asset, f"{name} refers to another site"
    assert request(tiny["server"], "GET", "/static/app.js")[0] == 200
    assert request(tiny["server"], "GET", "/static/style.css")[0] == 200
    assert request(tiny["server"], "GET", "/static/nothing.js")[0] == 404


# ------------------------------------------------------------------ traversal, limits, malformed requests

class OpenRecorder:
    """Files opened by threads other than the test's own (the server's request threads), via an audit hook."""

    def __init__(self):
        self.opened: list[str] = []
        self.active = False
        self.main = threading.current_thread()
        sys.addaudithook(self._hook)  # hooks cannot be removed: this one is inert while inactive

    def _hook(self, event: str, args) -> None:
        if self.active and event == "open" and threading.current_thread() is not self.main:
            self.opened.append(str(args[0]))


TRAVERSALS = [
    "/thumb/../../secret.txt", "/static/../gallery.py", "/static/..%2f..%2fsecret.txt", "/static/%2e%2e/server.py",
    "/static/%252e%252e%252fsecret.txt", "/api/image/..%2F..%2Fsecret.txt", "/api/search?q=../../secret.txt",
    "/api/search?q=..%2F..%2Fsecret.txt", "/api/search?q=red&k=..%5C..%5Csecret", "/..", "/thumb/..\\secret.txt",
    "/api/search?../secret.txt=1&q=red",
]


def test_traversal_attempts_get_404_and_read_nothing(tiny):
    secret = tiny["root"] / "secret.txt"
    secret.write_text("do not serve me")
    recorder = OpenRecorder()
    recorder.active = True
    try:
        request(tiny["server"], "GET", "/thumb/9")  # a real read first: the recorder does see the server's files
        assert any(name.endswith("p9.png") for name in recorder.opened)
        recorder.opened.clear()
        for path in TRAVERSALS:
            status, _, body = request(tiny["server"], "GET", path)
            assert status == 404, path
            assert json.loads(body)["error"] and b"do not serve" not in body, path
        status, _, _ = request(tiny["server"], "POST", "/api/image?k=../1", body=b"x")
        assert status == 404
    finally:
        recorder.active = False
    assert recorder.opened == []
    assert get_json(tiny["server"], "/api/health")[0] == 200


@pytest.mark.parametrize("path, status", [
    ("/api/search?q=" + "a" * 1001, 413), ("/api/search?q=" + "a" * 70_000, 414),
    ("/api/search?" + "&".join(f"x{i}=1" for i in range(20)) + "&q=red", 413),
    ("/api/search?q=", 400), ("/api/search?q=%20%20", 400), ("/api/search", 400), ("/api/search?q=red&k=0", 400),
    ("/api/search?q=red&k=101", 400), ("/api/search?q=red&k=ten", 400), ("/api/search?q=red&k=%C2%B2", 400),
    ("/api/image/24", 404), ("/api/image/3?k=-1", 400), ("/api/nothing", 404), ("/api/image", 405),
])
def test_bad_requests_get_their_status_and_the_next_request_is_answered(tiny, path, status):
    got, answer = get_json(tiny["server"], path)
    assert got == status and isinstance(answer["error"], str) and "\n" not in answer["error"]
    assert get_json(tiny["server"], "/api/search?q=red&k=2")[0] == 200


def test_oversized_and_malformed_bodies(tiny):
    server = tiny["server"]
    status, headers, body = request(server, "POST", "/api/image", body=b"x" * (65 << 10))
    assert status == 413 and "byte limit" in json.loads(body)["error"] and headers.get("Connection") == "close"
    assert request(server, "POST", "/api/image", headers={"Transfer-Encoding": "chunked"}, body=b"0\r\n\r\n")[0] == 411
    assert request(server, "POST", "/api/image", headers={"Content-Length": "abc"}, body=b"")[0] == 400
    assert request(server, "POST", "/", body=b"hello")[0] == 405
    assert request(server, "PUT", "/api/image", body=b"hello")[0] == 501
    # this index takes no uploads: a picture gets one clear error, not a crash
    status, _, body = request(server, "POST", "/api/image", body=b"\x89PNG")
    assert status == 400 and "does not take uploads" in json.loads(body)["error"]
    assert get_json(server, "/api/health")[0] == 200


# ------------------------------------------------------------------ concurrency

def test_concurrent_queries_get_the_answers_of_sequential_ones(tiny):
    texts = [" ".join(np.random.default_rng(i).choice(WORDS, 3)) for i in range(12)]
    engine = tiny["engine"]
    expected = {text: [hit["id"] for hit in engine.search_text(text, 5)["results"]] for text in texts}
    result = run_load_test(tiny["server"].url, texts, clients=6, queries=60, k=5, keep_responses=True)
    assert result.errors == 0 and len(result.responses) == 60
    for i, answer in enumerate(result.responses):
        assert [hit["id"] for hit in answer["results"]] == expected[texts[i % len(texts)]]
    assert result.qps > 0 and result.p50_ms <= result.p99_ms


def test_load_test_command_starts_a_server_measures_and_stops(tiny, tmp_path, capsys):
    out = tmp_path / "load.json"
    assert main(["serve", "--index", str(tiny["index"]), "--rerank", "6", "--load-test", "--clients", "2",
                 "--queries", "20", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert (record["queries"], record["clients"], record["errors"], record["rerank"]) == (20, 2, 0, 6)
    assert record["qps"] > 0 and 0 < record["p50_ms"] <= record["p99_ms"]
    assert "queries/s" in capsys.readouterr().out


def test_load_test_refuses_other_hosts():
    with pytest.raises(ValueError, match="only targets this machine"):
        run_load_test("http://example.org:8000/", ["red"], queries=1)


# ------------------------------------------------------------------ indexes without image files

def test_precomp_without_image_files_still_serves(tmp_path, tiny):
    index = build_tiny_index(tmp_path, manifest=False)
    engine = open_engine(index, rerank=RERANK, log=lambda *_: None)
    with serving(engine) as server:
        _, health = get_json(server, "/api/health")
        assert not health["thumbnails"] and health["captions_shown"]
        _, answer = get_json(server, "/api/search?q=red+dog&k=3")
        assert len(answer["results"]) == 3
        assert all(hit["image_url"] is None and hit["caption"] for hit in answer["results"])
        assert request(server, "GET", "/thumb/0")[0] == 404


def test_index_whose_data_folder_is_gone_serves_ids(tiny, tmp_path):
    logged = []
    engine = open_engine(tiny["index"], data_dir=tmp_path / "gone", rerank=RERANK, log=logged.append)
    assert any("ids only" in line for line in logged) and any("--rerank" in line for line in logged)
    with serving(engine) as server:
        _, health = get_json(server, "/api/health")
        assert health["rerank"] == 0 and not health["captions_shown"]
        _, answer = get_json(server, "/api/search?q=red+dog&k=4")
        assert [hit["id"] for hit in answer["results"]] == [h.item for h in tiny["searcher"].search_text("red dog", 4)]
        assert all(hit["caption"] is None and hit["image_url"] is None for hit in answer["results"])
        # an image query falls back to the index's stored vector: the same first stage as re-encoding
        _, answer = get_json(server, "/api/image/5?k=4")
        assert [hit["id"] for hit in answer["results"]] == [h.item for h in tiny["searcher"].search_image(5, 4)]


# ------------------------------------------------------------------ uploads (an index of the package's own features)

@pytest.fixture(scope="module")
def featurised(tmp_path_factory):
    """Eight drawings featurised by the package's network, indexed by a tiny model over 49 x 1280 regions."""
    from temde.features import IMAGE_SIZE, MODEL_NAME, FeatureExtractor

    root = tmp_path_factory.mktemp("featurised")
    pictures, data = root / "pictures", root / "data"
    pictures.mkdir()
    paths = []
    for i in range(8):
        picture = Image.new("RGB", (120, 90), "white")
        picture.paste(colour(3 * i), (10 * i, 5, 10 * i + 50, 60))
        paths.append(pictures / f"d{i}.png")
        picture.save(paths[-1])
    features = FeatureExtractor(cache_dir=None, progress=False).extract(paths)
    captions = [f"{WORDS[i]} {WORDS[i + 3]} picture" for i in range(8)]
    write_split(data, "test", features, captions)
    vocab = Vocabulary.build(captions)
    (data / "manifest.json").write_text(json.dumps({
        "feature_model": MODEL_NAME, "image_size": IMAGE_SIZE, "images_root": str(pictures),
        "splits": {"test": {"images": [p.name for p in paths]}}}))
    build_index(tiny_checkpoint(root / "model.pt", vocab, 1280), data, "test", root / "index", log=lambda *_: None)
    engine = open_engine(root / "index", rerank=4, log=lambda *_: None)
    with serving(engine, Limits(max_upload_bytes=1 << 20)) as server:
        yield {"server": server, "paths": paths, "searcher": Searcher.open(root / "index")}


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG file declaring a huge picture (a decompression bomb): a real header, a little compressed data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes(1 << 16))  # the first rows of zeros; a bomb just keeps going
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_upload_of_an_indexed_picture_finds_that_picture(featurised):
    server = featurised["server"]
    assert get_json(server, "/api/health")[1]["upload"] is True
    body = featurised["paths"][5].read_bytes()
    status, _, raw = request(server, "POST", "/api/image?k=3", body=body, headers={"Content-Type": "image/png"})
    assert status == 200
    answer = json.loads(raw)
    assert answer["similar"][0]["id"] == 5 and answer["similar"][0]["cosine"] > 0.999
    expected = featurised["searcher"].search_image(5, k=3, rerank=4)  # the same picture, indexed
    assert [hit["id"] for hit in answer["results"]] == [h.item for h in expected]
    np.testing.assert_allclose([hit["score"] for hit in answer["results"]], [h.score for h in expected], atol=1e-4)
    assert {"features", "encode", "first_stage", "rerank", "total"} <= set(answer["timing_ms"])


@pytest.mark.parametrize("body, status, message", [
    (b"", 400, "empty upload"),
    (b"this is not a picture", 400, "not an image"),
    (png_claiming(100_000, 100_000), 413, "pixel limit"),
    (b"TRUNCATED", 400, "cannot be decoded"),
])
def test_bad_uploads_get_one_json_error_and_the_server_keeps_serving(featurised, body, status, message):
    if body == b"TRUNCATED":
        whole = featurised["paths"][2].read_bytes()
        body = whole[:len(whole) // 2]
    got, _, raw = request(featurised["server"], "POST", "/api/image", body=body)
    answer = json.loads(raw)
    assert got == status and message in answer["error"] and set(answer) == {"error", "status"}
    ok, _, raw = request(featurised["server"], "POST", "/api/image?k=2", body=featurised["paths"][1].read_bytes())
    assert ok == 200 and json.loads(raw)["similar"][0]["id"] == 1


# ------------------------------------------------------------------ the command

def test_cli_defaults_to_loopback_and_refuses_bad_options(capsys):
    args = build_parser().parse_args(["serve", "--index", "ix"])
    assert (args.host, args.port, args.rerank) == ("127.0.0.1", 8000, 0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--index", "ix", "--port", "70000"])
    assert "port number" in capsys.readouterr().err
    assert main(["serve", "--index", "/nowhere/index"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("temde serve: error:") and "\n" not in err


def test_cli_reports_a_taken_port_in_one_line(tiny, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--index", str(tiny["index"]), "--port", str(port), "--no-upload"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"temde serve: error: cannot listen on 127.0.0.1:{port}")
