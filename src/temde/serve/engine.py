"""The queries the service answers, on one loaded model and index, with the time each stage took.

Each query is the `Searcher`'s two stages taken apart so each can be timed: encode the query, the FAISS first
stage (cosine of global vectors), and the model re-scoring the short list. The ranking rules are the Searcher's:
the short list is max(k, rerank) long, re-ranked by the model's score (stable on ties), else kept in cosine order.

Re-ranking needs the short list's encoded regions (images) or tokens (captions). `temde search` encodes them per
query from the data folder; a server answering many queries encodes the whole gallery once at start-up instead
(`pre_encode`), when it fits in PRE_ENCODE_BYTES: re-ranking 100 images of the default data then costs the model's
100 pair scores, not reading and encoding 25 MB of region features per query. Larger galleries fall back to the
per-query encoding, as `temde search` does.

Concurrency: HTTP requests arrive on many threads, but there is one model and one FAISS index (an HNSW search
changes the index's efSearch while it runs). A lock serialises the model-and-index part of every query, under
`torch.inference_mode`; the time spent waiting for it is reported as `wait`. The upload network has its own lock,
so a picture being featurised does not hold up text queries.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

from temde.data.precomp import image_of_caption
from temde.index.two_stage import QueryError, Searcher, unknown_words
from temde.models.encoders import Encoded
from temde.serve.gallery import Gallery

MAX_K = 100  # results per request: a page of thumbnails, and a bound on the work one request can ask for
# Encoded gallery kept in memory for re-ranking (on the model's device): 1,000 images of the f30k presets (36
# regions x 1024) take ~150 MB; the default data's 500 test images at embed 256 take 25 MB.
PRE_ENCODE_BYTES = 512 << 20


class _Clock:
    """Milliseconds per named stage; CUDA work is synchronised so a stage's time is its own."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - start)


def _rank(ids: np.ndarray, cosine: np.ndarray, model_scores: np.ndarray | None, k: int,
          exclude: int | None = None) -> list[tuple[int, float, float, bool]]:
    """(id, score, cosine, reranked) of the top k: by model score (stable) when re-ranked, else cosine order.
    Slots FAISS could not fill (id -1) and `exclude` (the query image itself) are dropped."""
    keep = (ids >= 0) & (ids != (-1 if exclude is None else exclude))
    ids, cosine = ids[keep], cosine[keep]
    if model_scores is None:
        return [(int(i), float(c), float(c), False) for i, c in zip(ids[:k], cosine[:k])]
    scores = model_scores[keep]
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[o]), float(scores[o]), float(cosine[o]), True) for o in order]


class SearchEngine:
    """Text -> images, indexed image -> captions + similar images, uploaded picture -> the same.

    Every answer is a JSON-ready dict: `results` (and `similar` for image queries), each with id, score, cosine,
    reranked, caption and image_url; `timing_ms` with the stages that ran (features, encode, first_stage, rerank),
    `wait` (queued behind other queries) and `total`.
    """

    def __init__(self, searcher: Searcher, gallery: Gallery, rerank: int = 0, featuriser=None, max_k: int = MAX_K):
        if rerank < 0:
            raise ValueError(f"rerank must be >= 0, got {rerank}")
        self.searcher = searcher
        self.gallery = gallery
        self.rerank = rerank
        self.featuriser = featuriser
        self.max_k = max_k
        self._lock = threading.Lock()
        self.queries_answered = 0
        self._images: Encoded | None = None  # the whole gallery, encoded (pre_encode), else None
        self._captions: Encoded | None = None

    # ---------------------------------------------------------------- helpers

    @property
    def device(self) -> torch.device:
        return self.searcher.device

    @property
    def has_features(self) -> bool:
        """Whether the indexed split's features can be read (re-ranking and image re-encoding need them)."""
        return self.gallery.captions is not None

    def check_k(self, k: int) -> int:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.max_k:
            raise QueryError(f"k must be an integer in [1, {self.max_k}], got {k!r}")
        return k

    def pre_encode(self, budget_bytes: int = PRE_ENCODE_BYTES, log=print) -> None:
        """Encode every indexed image and caption once, if re-ranking is on and they fit in `budget_bytes`."""
        from temde.data.batches import encode_captions as tokenize
        from temde.scoring import encode_captions

        if not (self.rerank and self.has_features):
            return
        split, model = self.searcher.split, self.searcher.model
        with torch.inference_mode():  # measured on one image and one caption: whatever the host model keeps
            one_image = self.searcher.encode_images(np.array([0]))
            one_caption = self.searcher.encode_text(split.captions[0])
        image_bytes = split.n_images * one_image.local[0].nbytes
        longest = max(len(self.searcher.vocab.encode(caption)) for caption in split.captions)  # padded to this
        caption_bytes = split.n_captions * longest * one_caption.local[0, 0].nbytes
        if image_bytes + caption_bytes > budget_bytes:
            log(f"re-ranking encodes each short list per query (the gallery would take "
                f"{(image_bytes + caption_bytes) >> 20} MB, over {budget_bytes >> 20} MB)")
            return
        start = time.perf_counter()
        with self._lock, torch.inference_mode():
            chunks = [self.searcher.encode_images(np.arange(i, min(i + 1024, split.n_images)))  # checks features
                      for i in range(0, split.n_images, 1024)]
            self._images = Encoded.cat(chunks).to(self.device)
            if "captions" in self.searcher.index.parts:
                tokens, lengths = tokenize(split.captions, self.searcher.vocab)
                self._captions = encode_captions(model, tokens, lengths, self.searcher.batch_size,
                                                 self.device).to(self.device)
        log(f"encoded the gallery for re-ranking in {time.perf_counter() - start:.1f} s")

    def _shortlist_images(self, ids: np.ndarray) -> Encoded:
        if self._images is not None:
            return self._images[torch.as_tensor(ids, device=self.device)]
        return self.searcher.encode_images(ids).to(self.device)

    def _shortlist_captions(self, ids: np.ndarray) -> Encoded:
        if self._captions is not None:
            return self._captions[torch.as_tensor(ids, device=self.device)].trim()
        from temde.data.batches import encode_captions as tokenize
        from temde.scoring import encode_captions

        tokens, lengths = tokenize([self.gallery.captions[i] for i in ids], self.searcher.vocab)
        return encode_captions(self.searcher.model, tokens, lengths, self.searcher.batch_size,
                               self.device).to(self.device)

    @contextmanager
    def _locked(self, clock: _Clock) -> Iterator[None]:
        with clock.stage("wait"):
            self._lock.acquire()
        try:
            with torch.inference_mode():
                yield
            self.queries_answered += 1
        finally:
            self._lock.release()

    def _image_hit(self, image_id: int, score: float, cosine: float, reranked: bool) -> dict[str, Any]:
        captions = self.gallery.image_captions(image_id)
        return {"id": image_id, "score": score, "cosine": cosine, "reranked": reranked,
                "caption": captions[0] if captions else None, "captions": captions,
                "image_url": self.gallery.image_url(image_id)}

    def _caption_hit(self, caption_id: int, score: float, cosine: float, reranked: bool,
                     query_image: int | None) -> dict[str, Any]:
        image_id = image_of_caption(self.gallery.captions_per_image, caption_id)
        return {"id": caption_id, "image_id": image_id, "score": score, "cosine": cosine, "reranked": reranked,
                "caption": self.gallery.caption(caption_id), "image_url": self.gallery.image_url(image_id),
                "match": query_image is not None and image_id == query_image}

    def _part(self, name: str):
        return self.searcher.index.parts.get(name)

    # ---------------------------------------------------------------- text -> images

    def search_text(self, text: str, k: int = 10) -> dict[str, Any]:
        """The images for a caption, as `Searcher.search_text(text, k, rerank)` ranks them."""
        started = time.perf_counter()
        self.check_k(k)
        if not isinstance(text, str) or not text.strip():
            raise QueryError("empty query: give at least one word")
        images = self._part("images")
        if images is None:
            raise QueryError(f"{self.searcher.index.path}: this index holds no images (built without them)")
        rerank = self.rerank if self.has_features else 0
        clock = _Clock(self.device)
        with self._locked(clock):
            with clock.stage("encode"):
                query = self.searcher.encode_text(text)
            with clock.stage("first_stage"):
                cosine, ids = images.search(query.global_.float().numpy(), max(k, rerank))
                cosine, ids = cosine[0], ids[0]
            model_scores = None
            if rerank:
                with clock.stage("rerank"):
                    found = ids[ids >= 0]
                    shortlist = self._shortlist_images(found)
                    scored = self.searcher.model.score(shortlist, query.to(self.device))[:, 0].float().cpu()
                    model_scores = np.full(len(ids), -np.inf, dtype=np.float32)
                    model_scores[ids >= 0] = scored.numpy()
        hits = _rank(ids, cosine, model_scores, k)
        clock.ms["total"] = 1000 * (time.perf_counter() - started)
        reranked = int((ids >= 0).sum()) if rerank else 0  # the whole short list: max(k, rerank) when k > rerank
        return {"query": text, "k": k, "rerank": reranked,
                "unknown_words": unknown_words(text, self.searcher.vocab),
                "results": [self._image_hit(*hit) for hit in hits], "timing_ms": clock.ms}

    # ---------------------------------------------------------------- image -> captions + similar images

    def _image_query(self, query: Encoded | None, vector: np.ndarray, k: int, clock: _Clock,
                     query_image: int | None) -> dict[str, Any]:
        """Captions (re-ranked when `query` carries the image's regions) and similar images (cosine of globals:
        the model scores image-caption pairs, not image pairs) for one image. Runs under the lock."""
        captions, images = self._part("captions"), self._part("images")
        rerank = self.rerank if (query is not None and self.has_features) else 0
        caption_hits, similar = [], []
        with clock.stage("first_stage"):
            if captions is not None:
                cosine, ids = captions.search(vector, max(k, rerank))
                cosine, ids = cosine[0], ids[0]
            if images is not None:
                extra = 1 if query_image is not None else 0  # the query image finds itself first
                sim_cosine, sim_ids = images.search(vector, k + extra)
                similar = _rank(sim_ids[0], sim_cosine[0], None, k, exclude=query_image)
        if captions is not None:
            model_scores = None
            if rerank:
                with clock.stage("rerank"):
                    found = ids[ids >= 0]
                    candidates = self._shortlist_captions(found)
                    scored = self.searcher.model.score(query.to(self.device), candidates)[0]
                    model_scores = np.full(len(ids), -np.inf, dtype=np.float32)
                    model_scores[ids >= 0] = scored.float().cpu().numpy()
            caption_hits = _rank(ids, cosine, model_scores, k)
            rerank = int((ids >= 0).sum()) if rerank else 0  # how many the model re-scored
        return {"k": k, "rerank": rerank if captions is not None else 0,
                "results": [self._caption_hit(*hit, query_image) for hit in caption_hits],
                "similar": [self._image_hit(*hit) for hit in similar]}

    def search_image(self, image_id: int, k: int = 10) -> dict[str, Any]:
        """Captions for an indexed image, as `Searcher.search_image(image_id, k, rerank)` ranks them, and the
        images nearest to it. Without the data folder, the index's stored vector is the query (cosine only)."""
        started = time.perf_counter()
        self.check_k(k)
        if not self.gallery.has_image(image_id):
            raise QueryError(f"no image {image_id}: ids run from 0 to {self.gallery.n_images - 1}")
        clock = _Clock(self.device)
        with self._locked(clock):
            query = None
            with clock.stage("encode"):
                if self.has_features:
                    query = self._shortlist_images(np.array([image_id]))
                    vector = query.global_.float().cpu().numpy()
                elif self._part("images") is not None:
                    vector = self._part("images").vectors_by_id(np.array([image_id]))
                else:
                    raise QueryError("this index holds no image vectors and its data folder is gone")
            answer = self._image_query(query, vector, k, clock, image_id)
        answer["image"] = self._image_hit(image_id, 1.0, 1.0, False)
        clock.ms["total"] = 1000 * (time.perf_counter() - started)
        answer["timing_ms"] = clock.ms
        return answer

    def search_upload(self, data: bytes, k: int = 10) -> dict[str, Any]:
        """Captions and similar images for a new picture (UploadError when it cannot be read or featurised)."""
        from temde.scoring import encode_images

        started = time.perf_counter()
        self.check_k(k)
        if self.featuriser is None:
            raise QueryError("this index does not take uploads: its images were not featurised by this package")
        clock = _Clock(self.device)
        with clock.stage("features"):
            features = self.featuriser.features(data)
        with self._locked(clock):
            with clock.stage("encode"):
                query = encode_images(self.searcher.model, features, 1, self.device)
            answer = self._image_query(query, query.global_.float().numpy(), k, clock, None)
        answer["image"] = None
        clock.ms["total"] = 1000 * (time.perf_counter() - started)
        answer["timing_ms"] = clock.ms
        return answer

    # ---------------------------------------------------------------- status

    def health(self) -> dict[str, Any]:
        meta = self.searcher.index.meta
        return {"status": "ok", "images": int(meta["counts"]["images"]), "captions": int(meta["counts"]["captions"]),
                "captions_per_image": int(meta.get("captions_per_image", 1)), "split": meta.get("split"),
                "kind": meta.get("kind"), "model": str(meta.get("model_sha256", ""))[:12],
                "rerank": self.rerank if self.has_features else 0, "max_k": self.max_k,
                "thumbnails": self.gallery.files is not None, "captions_shown": self.has_features,
                "upload": self.featuriser is not None, "queries_answered": self.queries_answered,
                "device": str(self.device)}
