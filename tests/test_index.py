"""Two-stage retrieval: FAISS wrapper and index directories, two-stage score matrices, search, CLI."""
from __future__ import annotations

import json
import re
from urllib.parse import unquote

import numpy as np
import pytest
import torch

from temde.cli import main
from temde.data import Vocabulary, encode_captions, load_split, write_split
from temde.errors import CheckpointError, DataError
from temde.evaluation import evaluate, image_to_text_ranks, text_to_image_ranks
from temde.index.store import (IndexOptions, VectorIndex, load_index_directory, model_fingerprint, read_meta,
                               save_index_directory)
from temde.index.two_stage import (QueryError, Searcher, build_index, evaluate_two_stage, two_stage_evaluate,
                                   two_stage_scores)
from temde.models import create_model
from temde.scoring import encode_split, score_matrix
from temde.training.checkpoint import load_checkpoint, save_checkpoint

WORDS = "red green blue apple dog cat tree car house boat sun moon small big old".split()


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_top_k(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ data.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


# ------------------------------------------------------------------ FAISS wrapper and index directories

def test_flat_round_trip_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    data, queries = unit_rows(rng, 300, 24), unit_rows(rng, 7, 24)
    ids = 1000 + np.arange(300)[::-1]  # ids are not positions: the mapping must be applied
    save_index_directory(tmp_path / "ix", {"images": VectorIndex.build(data, ids)}, {"model_sha256": "x", "split": "t"})
    loaded = load_index_directory(tmp_path / "ix")
    scores, found = loaded.images.search(queries, 10)
    expected_scores, expected_positions = brute_force_top_k(data, queries, 10)
    np.testing.assert_array_equal(found, ids[expected_positions])
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    np.testing.assert_allclose(loaded.images.vectors_by_id(ids[[5, 0]]), data[[5, 0]], atol=1e-7)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_return_valid_ids(kind):
    rng = np.random.default_rng(1)
    centres = unit_rows(rng, 20, 32)
    data = centres[rng.integers(0, 20, 2000)] + 0.3 * unit_rows(rng, 2000, 32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[:50] + 0.05 * unit_rows(rng, 50, 32)
    index = VectorIndex.build(data, options=IndexOptions(kind))
    scores, found = index.search(queries, 10)
    assert found.shape == (50, 10) and ((found >= 0) & (found < 2000)).all()
    assert all(len(set(row)) == 10 for row in found)
    # the scores are the true inner products of the returned rows, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, data[found]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    _, exact = brute_force_top_k(data, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall > 0.7


def test_ivf_visiting_every_list_is_exact():
    rng = np.random.default_rng(2)
    data, queries = unit_rows(rng, 800, 16), unit_rows(rng, 5, 16)
    index = VectorIndex.build(data, options=IndexOptions("ivf", nlist=8, nprobe=8))
    _, found = index.search(queries, 5)
    np.testing.assert_array_equal(found, brute_force_top_k(data, queries, 5)[1])


def test_corrupt_missing_and_unknown_index_files(tmp_path):
    rng = np.random.default_rng(3)
    index = VectorIndex.build(unit_rows(rng, 50, 8))
    folder = save_index_directory(tmp_path / "ix", {"images": index}, {"model_sha256": "x", "split": "t"})
    meta = read_meta(folder)
    faiss_file = folder / meta["files"]["images"]["index"]
    blob = faiss_file.read_bytes()

    faiss_file.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(CheckpointError, match=faiss_file.name):
        load_index_directory(folder)
    faiss_file.write_bytes(blob[:100] + bytes(len(blob) - 100))  # same size, garbage
    with pytest.raises(CheckpointError, match=faiss_file.name):
        load_index_directory(folder)
    faiss_file.write_bytes(b"JUNK" + blob[4:])  # a bad header: FAISS itself refuses it, sha256 unchecked
    with pytest.raises(CheckpointError, match=f"{faiss_file.name}: not a readable FAISS index"):
        load_index_directory(folder, verify=False)
    faiss_file.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_index_directory(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json"):
        load_index_directory(folder)
    (folder / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a temde index"):
        load_index_directory(folder)
    (folder / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json"):
        load_index_directory(folder)
    with pytest.raises(CheckpointError, match="no such index"):
        load_index_directory(tmp_path / "nowhere")


def test_rebuild_replaces_files_of_the_previous_build(tmp_path):
    rng = np.random.default_rng(4)
    meta = {"model_sha256": "x", "split": "t"}
    save_index_directory(tmp_path / "ix", {"images": VectorIndex.build(unit_rows(rng, 30, 8))}, meta)
    second = unit_rows(rng, 40, 8)
    save_index_directory(tmp_path / "ix", {"images": VectorIndex.build(second)}, meta)
    assert len(list((tmp_path / "ix").glob("*.faiss"))) == 1
    loaded = load_index_directory(tmp_path / "ix")
    assert len(loaded.images) == 40
    np.testing.assert_allclose(loaded.images.vectors_by_id(np.arange(40)), second, atol=1e-7)


# ------------------------------------------------------------------ a tiny real model and data set

N_IMAGES, REGIONS, IMG_DIM, K_CAPS = 24, 5, 12, 2


def tiny_model(vocab_size: int, head: str = "saf", seed: int = 0):
    torch.manual_seed(seed)
    return create_model(f"{head}-small", vocab_size=vocab_size, img_dim=IMG_DIM, embed_size=16, sim_dim=8,
                        word_dim=8).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A precomp folder (with a manifest and image files), its vocabulary and two checkpoints."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(5)
    data = root / "data"
    captions = [" ".join(rng.choice(WORDS, 4)) for _ in range(N_IMAGES * K_CAPS)]
    write_split(data, "test", rng.standard_normal((N_IMAGES, REGIONS, IMG_DIM)).astype(np.float32), captions)
    vocab = Vocabulary.build(captions)
    vocab.save(data / "vocab.json")
    (data / "img").mkdir()
    for i in range(N_IMAGES):
        (data / "img" / f"{i}.svg").write_text(f'<svg xmlns="http://www.w3.org/2000/svg"><text>{i}</text></svg>')
    (data / "manifest.json").write_text(json.dumps({"splits": {"test": [f"img/{i}.svg" for i in range(N_IMAGES)]}}))
    checkpoints = {}
    for name, seed in (("a", 0), ("b", 1)):
        model = tiny_model(len(vocab), seed=seed)
        checkpoints[name] = save_checkpoint(root / f"{name}.pt", model.state_dict(), model.config.to_dict(),
                                            vocab.to_json(), {"epoch": 1})
    return {"root": root, "data": data, "vocab": vocab, "ckpt": checkpoints}


def test_fingerprint_follows_the_weights_not_the_file(tiny, tmp_path):
    a = load_checkpoint(tiny["ckpt"]["a"])
    same_weights = save_checkpoint(tmp_path / "a2.pt", a["model"], a["config"], a["vocab"], {"epoch": 7})
    assert model_fingerprint(load_checkpoint(same_weights)) == model_fingerprint(a)
    assert model_fingerprint(load_checkpoint(tiny["ckpt"]["b"])) != model_fingerprint(a)


@pytest.fixture(scope="module")
def built(tiny):
    out = tiny["root"] / "index"
    build_index(tiny["ckpt"]["a"], tiny["data"], "test", out, log=lambda *_: None)
    return out


def test_search_matches_brute_force_over_encoded_globals(tiny, built):
    searcher = Searcher.open(built)
    img, cap = encode_split(searcher.model, load_split(tiny["data"], "test"), tiny["vocab"])
    query = "red apple on a big boat"
    tokens, lengths = encode_captions([query], tiny["vocab"])
    q = searcher.model.encode_captions(tokens, lengths).global_.detach()
    cosine = torch.nn.functional.normalize(img.global_, dim=-1) @ torch.nn.functional.normalize(q, dim=-1)[0]
    expected = torch.argsort(cosine, descending=True)[:5].tolist()
    hits = searcher.search_text(query, k=5)
    assert [h.item for h in hits] == expected
    np.testing.assert_allclose([h.cosine for h in hits], cosine[expected].numpy(), atol=1e-5)


def test_rerank_orders_the_short_list_by_the_model(tiny, built):
    searcher = Searcher.open(built)
    query = "green tree small cat"
    first = searcher.search_text(query, k=8)
    hits = searcher.search_text(query, k=3, rerank=8)
    img, _ = encode_split(searcher.model, load_split(tiny["data"], "test"), tiny["vocab"])
    tokens, lengths = encode_captions([query], tiny["vocab"])
    with torch.no_grad():
        cap = searcher.model.encode_captions(tokens, lengths)
        short = torch.tensor([h.item for h in first])
        model_scores = searcher.model.score(img[short], cap)[:, 0]
    best = short[torch.argsort(model_scores, descending=True)[:3]].tolist()
    assert [h.item for h in hits] == best and all(h.reranked for h in hits)
    np.testing.assert_allclose([h.score for h in hits], torch.sort(model_scores, descending=True).values[:3],
                               atol=1e-5)


def test_image_query_returns_captions(built):
    hits = Searcher.open(built).search_image(3, k=4, rerank=10)
    assert len(hits) == 4 and all(0 <= h.item < N_IMAGES * K_CAPS for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_index_of_another_model_is_refused(tiny, built):
    with pytest.raises(CheckpointError, match="built by model"):
        Searcher.open(built, checkpoint=tiny["ckpt"]["b"])


def test_empty_query_and_bad_sizes(built):
    searcher = Searcher.open(built)
    for text in ("", "   "):
        with pytest.raises(QueryError, match="empty query"):
            searcher.search_text(text)
    assert searcher.search_text("?!", k=1)  # NLTK's tokens "?" and "!": a query, all <unk> in this vocabulary
    with pytest.raises(QueryError, match="rerank"):
        searcher.search_text("red", k=10, rerank=5)
    with pytest.raises(QueryError, match="image id"):
        searcher.search_image(N_IMAGES)


def test_changed_data_folder_is_detected(tiny, built, tmp_path):
    other = tmp_path / "data"
    split = load_split(tiny["data"], "test")
    write_split(other, "test", np.asarray(split.images)[::-1].copy(), split.captions)
    with pytest.raises(DataError, match="differ from those the index was built from"):
        Searcher.open(built, data_dir=other).search_text("red apple", k=2, rerank=5)


# ------------------------------------------------------------------ two-stage evaluation

@pytest.mark.parametrize("head", ["saf", "sgr"])
def test_two_stage_with_the_whole_gallery_equals_full_scoring(tiny, head):
    model = tiny_model(len(tiny["vocab"]), head)
    img, cap = encode_split(model, load_split(tiny["data"], "test"), tiny["vocab"])
    full = score_matrix(model, img, cap)
    scores = two_stage_scores(model, img, cap, rerank=N_IMAGES * K_CAPS)
    np.testing.assert_allclose(scores.t2i, full, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores.i2t, full, rtol=0, atol=1e-6)
    assert evaluate_two_stage(scores, K_CAPS) == evaluate(full, K_CAPS)


def test_two_stage_ranks_match_a_loop_reference(tiny):
    """Ranks by hand: inside the cosine short list an item is ranked by the model, outside it comes after the whole
    short list in cosine order (text->image: the true image; image->text: the best true caption). Ties are
    pessimistic: every negative scored >= the true item counts against it."""
    model = tiny_model(len(tiny["vocab"]), "sgr")
    img, cap = encode_split(model, load_split(tiny["data"], "test"), tiny["vocab"])
    full = score_matrix(model, img, cap).astype(np.float64)
    g_img = torch.nn.functional.normalize(img.global_, dim=-1).numpy().astype(np.float64)
    g_cap = torch.nn.functional.normalize(cap.global_, dim=-1).numpy().astype(np.float64)
    cosine = g_img @ g_cap.T
    rerank = 5
    expected = []
    for j in range(cap.global_.shape[0]):
        true = j // K_CAPS
        short = list(np.argsort(-cosine[:, j], kind="stable")[:rerank])
        if true in short:
            expected.append(sum(full[i, j] >= full[true, j] for i in short if i != true))
        else:
            outside = [i for i in range(N_IMAGES) if i not in short and i != true]
            expected.append(rerank + sum(cosine[i, j] >= cosine[true, j] for i in outside))
    scores = two_stage_scores(model, img, cap, rerank=rerank)
    np.testing.assert_array_equal(text_to_image_ranks(scores.t2i, K_CAPS), expected)

    def caption_rank(i: int, c: int, short: list[int]) -> int:
        negatives = [o for o in range(cosine.shape[1]) if o // K_CAPS != i]  # the image's other captions never count
        if c in short:
            return sum(full[i, o] >= full[i, c] for o in short if o in negatives)
        return (sum(o in negatives for o in short)
                + sum(cosine[i, o] >= cosine[i, c] for o in negatives if o not in short))

    expected_i2t = []
    for i in range(N_IMAGES):
        short = list(np.argsort(-cosine[i], kind="stable")[:rerank])
        expected_i2t.append(min(caption_rank(i, c, short) for c in range(i * K_CAPS, (i + 1) * K_CAPS)))
    np.testing.assert_array_equal(image_to_text_ranks(scores.i2t, K_CAPS), expected_i2t)


def test_placed_scores_never_credit_an_item_outside_the_short_list():
    from temde.index.two_stage import _place

    # Text->image, 4 images x 1 caption, short lists of K = 2 (given by hand). cosine[i, j]: image i, caption j.
    cosine = torch.tensor([[0.9, 0.9, 0.1, 0.3],
                           [0.8, 0.7, 0.2, 0.2],
                           [0.1, 0.8, 0.6, 0.1],
                           [0.2, 0.7, 0.5, 0.0]])
    lists = torch.tensor([[0, 1], [0, 2], [2, 3], [0, 1]])  # [caption, K]: the top-2 images by cosine
    model = torch.tensor([[0.3, 0.3], [0.1, 0.2], [0.9, 0.4], [0.5, 0.6]])  # model scores of those images
    t2i = _place(cosine.clone(), model.T.contiguous(), lists.T.contiguous(), dim=0)
    # Caption 0: true image 0 in the list, tied with image 1 by the model -> rank 1 (its cosine 0.9 is unused).
    # Caption 1: true image 1 outside (cosine 0.7, above both model scores), tied in cosine with outside image 3
    # -> after the 2 listed images and image 3: rank 3. Caption 2: image 2 first by the model -> rank 0.
    # Caption 3: true image 3 outside, below outside image 2 in cosine -> rank 3.
    assert text_to_image_ranks(t2i, 1).tolist() == [1, 3, 0, 3]
    listed = (lists.T.numpy(), np.arange(4))
    assert (t2i[listed] == model.T.numpy()).all()  # the model's scores, kept exactly
    outside = np.ones((4, 4), dtype=bool)
    outside[listed] = False
    assert t2i[outside].max() < model.min().item()

    # A -inf model score (caption 3, image 1) makes every outside item -inf: tied with it and with each other, an
    # outside true item still ranks after the whole list. Caption 1: after images 0, 2 (listed) and 3 (tied at
    # -inf) -> 3. Caption 3: after image 0 (0.5) and the tied images 1, 2 -> 3. Captions 0 and 2 unchanged.
    model[3, 1] = -np.inf
    t2i = _place(cosine.clone(), model.T.contiguous(), lists.T.contiguous(), dim=0)
    assert text_to_image_ranks(t2i, 1).tolist() == [1, 3, 0, 3]

    # Image->text, 2 images x 2 captions, K = 2. Image 0 (captions 0, 1): caption 1 listed, tied by the model with
    # listed negative caption 2 -> rank 1. Image 1 (captions 2, 3): both outside, tied with each other; its own
    # captions do not count, the two listed negatives do -> rank 2.
    cosine = torch.tensor([[0.1, 0.9, 0.8, 0.2],
                           [0.9, 0.8, 0.3, 0.3]])
    lists = torch.tensor([[1, 2], [0, 1]])
    i2t = _place(cosine, torch.tensor([[0.4, 0.4], [0.2, 0.1]]), lists, dim=1)
    assert image_to_text_ranks(i2t, 2).tolist() == [1, 2]


def test_two_stage_evaluate_reports_metrics_and_times(tiny):
    model = tiny_model(len(tiny["vocab"]))
    result = two_stage_evaluate(model, load_split(tiny["data"], "test"), tiny["vocab"], rerank=4, device="cpu",
                                batch_size=8)
    for key in ("i2t_r1", "t2i_r10", "rsum", "full_seconds", "two_stage_seconds", "speedup", "t2i_shortlist_recall",
                "encode_seconds"):
        assert key in result
    assert result["full"]["rsum"] >= 0 and result["n_images"] == N_IMAGES


# ------------------------------------------------------------------ CLI

def test_cli_build_search_html_and_errors(tiny, tmp_path, capsys):
    index = tmp_path / "ix"
    assert main(["index", "build", "--checkpoint", str(tiny["ckpt"]["a"]), "--data", str(tiny["data"]), "--out",
                 str(index), "--kind", "hnsw"]) == 0
    page, record = tmp_path / "out" / "page.html", tmp_path / "hits.json"
    assert main(["search", "--index", str(index), "--query", "a red apple", "-k", "3", "--rerank", "6",
                 "--html", str(page), "--json", str(record)]) == 0
    hits = json.loads(record.read_text())["hits"]
    assert len(hits) == 3 and all(h["reranked"] for h in hits)
    # each hit is shown as its own image file (from the manifest), by a path relative to the page
    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert [(page.parent / unquote(src)).resolve() for src in sources] == \
        [(tiny["data"] / "img" / f"{h['item']}.svg").resolve() for h in hits]
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--query", "  "]) == 2
    assert "empty query" in capsys.readouterr().err
    assert main(["search", "--index", str(index), "--query", "red", "--checkpoint", str(tiny["ckpt"]["b"])]) == 2
    err = capsys.readouterr().err
    assert "built by model" in err and len(err.strip().splitlines()) == 1
    assert main(["search", "--index", str(tmp_path / "none"), "--query", "red"]) == 2
    assert "no such index" in capsys.readouterr().err


def test_index_build_output_folder_policy(tiny, tmp_path, capsys):
    out = tmp_path / "ix"
    build = ["index", "build", "--checkpoint", str(tiny["ckpt"]["a"]), "--data", str(tiny["data"]), "--out", str(out)]
    assert main(build) == 0
    assert main(build) == 0  # the same request: rebuilt, and said so
    assert "rebuilding it" in capsys.readouterr().out
    assert main(build + ["--kind", "hnsw"]) == 2  # another request: refused, naming the setting and --force
    err = capsys.readouterr().err.strip()
    assert "--kind hnsw (recorded: flat)" in err and "--force" in err and len(err.splitlines()) == 1
    assert main(build[:3] + [str(tiny["ckpt"]["b"])] + build[4:]) == 2
    assert "the checkpoint's weights" in capsys.readouterr().err
    assert main(build + ["--kind", "hnsw", "--force"]) == 0
    assert read_meta(out)["kind"] == "hnsw"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("mine")
    assert main(build[:-1] + [str(notes), "--force"]) == 2
    assert "not a `temde index build` output folder" in capsys.readouterr().err


def _data_with_images_elsewhere(tiny, root, images_root):
    """A copy of the tiny data folder whose manifest has the layout `temde prepare` writes: image names relative
    to an `images_root` outside the data folder (openclipart's images live in the cache, not in the data set)."""
    import shutil

    data = root / "data"
    data.mkdir(parents=True)
    for name in ("test_ims.npy", "test_caps.txt", "vocab.json"):
        shutil.copy(tiny["data"] / name, data / name)
    names = [f"pic{i}.svg" for i in range(N_IMAGES)]
    (data / "manifest.json").write_text(json.dumps({
        "source": "folder", "images_root": str(images_root),
        "splits": {"test": {"n_images": N_IMAGES, "n_captions": N_IMAGES * K_CAPS, "images": names}}}))
    return data, names


def test_read_manifest_resolves_image_names_against_images_root(tiny, tmp_path):
    from temde.index.html import read_manifest

    data, names = _data_with_images_elsewhere(tiny, tmp_path, tmp_path / "elsewhere")
    assert read_manifest(data, "test", N_IMAGES) == [tmp_path / "elsewhere" / n for n in names]
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["images_root"] = "../pictures"  # a relative root is relative to the data folder
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(data, "test", N_IMAGES) == [data / ".." / "pictures" / n for n in names]
    del manifest["images_root"]  # no root: names are relative to the data folder itself
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(data, "test", N_IMAGES) == [data / n for n in names]


def test_search_page_shows_images_from_images_root_and_says_why_when_it_cannot(tiny, built, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    data, names = _data_with_images_elsewhere(tiny, tmp_path, pictures)
    for i, name in enumerate(names):
        (pictures / name).write_text(f'<svg xmlns="http://www.w3.org/2000/svg"><text>{i}</text></svg>')
    page, record = tmp_path / "page" / "results.html", tmp_path / "hits.json"
    args = ["search", "--index", str(built), "--data", str(data), "--query", "red apple", "-k", "4",
            "--html", str(page), "--json", str(record)]
    assert main(args) == 0
    hits = json.loads(record.read_text())["hits"]
    sources = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert [(page.parent / unquote(src)).resolve() for src in sources] == \
        [(pictures / names[h["item"]]).resolve() for h in hits]
    out = capsys.readouterr()
    assert "with their images" in out.out and "warning" not in out.err and 'class="notice"' not in page.read_text()

    # The images moved away: the page and the command both say which are missing and why.
    pictures.rename(tmp_path / "moved")
    for mode in ("relative", "inline"):
        assert main(args + ["--html-images", mode]) == 0
        out = capsys.readouterr()
        text = page.read_text()
        assert "<img" not in text and 'class="notice"' in text
        notice = re.search(r'<p class="notice">([^<]+)</p>', text).group(1)
        assert "4 of the 4 images cannot be shown" in notice and str(pictures / names[hits[0]["item"]]) in notice
        assert str(data / "manifest.json") in notice
        assert out.err.count("warning: 4 of the 4 images cannot be shown") == 1
        assert out.out.strip().endswith("images missing (see the warning above)")


def test_a_query_of_only_unknown_words_is_warned_about(built, tmp_path, capsys):
    page = tmp_path / "page.html"
    assert main(["search", "--index", str(built), "--query", "zebra xylophone", "-k", "2", "--html", str(page)]) == 0
    err = capsys.readouterr().err
    assert "warning: None of the query's words is in the model's vocabulary (zebra, xylophone)" in err
    assert "the results say nothing about what was asked" in page.read_text()
    assert main(["search", "--index", str(built), "--query", "red zebra", "-k", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "read as <unk>): zebra" in err


def test_two_stage_folds_with_whole_fold_galleries_equal_evaluate_folds(tiny):
    from temde.evaluation import METRIC_KEYS, evaluate_folds

    model = tiny_model(len(tiny["vocab"]), "sgr")
    split = load_split(tiny["data"], "test")
    img, cap = encode_split(model, split, tiny["vocab"])
    expected = evaluate_folds(score_matrix(model, img, cap), K_CAPS, folds=3)
    result = two_stage_evaluate(model, split, tiny["vocab"], rerank=N_IMAGES * K_CAPS, folds=3)
    assert len(result["folds"]) == 3
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(expected[key]) and result["full"][key] == pytest.approx(expected[key])


# ------------------------------------------------------------------ benchmarks (tiny sizes)

def test_index_bench_small(tmp_path):
    import argparse

    from temde.bench.index import add_index_bench_parsers

    parser = argparse.ArgumentParser()
    add_index_bench_parsers(parser.add_subparsers(dest="bench"))
    out = tmp_path / "index.json"
    args = parser.parse_args(["index", "--n", "3000", "--dim", "16", "--queries", "20", "--nlist", "16",
                              "--nprobe", "2,16", "--ef-search", "16,64", "--clusters", "20", "--latent", "8",
                              "--out", str(out)])
    assert args.run(args) == 0
    rows = json.loads(out.read_text())["rows"]
    recall = {(r["kind"], r.get("nprobe"), r.get("ef_search")): r["recall@10"] for r in rows}
    assert recall[("flat", None, None)] == 1.0
    assert recall[("ivf", 16, None)] == 1.0  # every list visited: exact
    assert all(0.0 <= value <= 1.0 for value in recall.values()) and len(rows) == 5
    assert all(r["median_ms"] > 0 for r in rows)


def test_bench_recall_counts_neighbours_tied_at_the_kth_place():
    from temde.bench.index import recall_at_k

    # Inner products with the query [1, 0]: rows score 1, 0.8, 0.6, 0.6 (rows 2 and 3 are the same vector), 0.
    data = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0.6, 0.8], [0, 1]], dtype=np.float32)
    queries = np.array([[1, 0]] * 3, dtype=np.float32)
    truth = np.array([[0, 1, 2]] * 3)  # exact top-3; row 3 ties with row 2 at the 3rd place
    found = np.array([[0, 1, 3],  # the other tied row: as near as the exact list's -> 3 of 3
                      [0, 4, 2],  # row 4 (score 0) is not a top-3 neighbour -> 2 of 3
                      [1, 0, -1]])  # an empty slot never counts -> 2 of 3
    assert recall_at_k(data, queries, truth, found, 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_two_stage_bench_small():
    from temde.bench.index import TwoStageBenchSettings, run_two_stage_bench

    result = run_two_stage_bench(TwoStageBenchSettings(gallery=60, models=["saf-small"], regions=4, rerank=10,
                                                       queries=2, vocab_size=50), progress=lambda *_: None)
    (row,) = result["rows"]
    assert row["full_ms"] > 0 and row["two_stage_ms"] > 0 and row["speedup"] == row["full_ms"] / row["two_stage_ms"]
