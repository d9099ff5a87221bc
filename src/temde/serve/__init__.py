"""`temde serve`: a local search page and JSON API over an index built by `temde index build`.

The model and index are loaded once (`open_engine`); `server.make_server` answers HTTP with the standard library's
ThreadingHTTPServer (no web framework to install), and the page's HTML, script and style ship in `static/`.

    engine.py   the queries (text -> images, image -> captions + similar images, upload), timed per stage, locked
    gallery.py  captions and thumbnails by id, from the data folder's manifest
    upload.py   uploaded pictures -> the package's own region features, with size checks
    server.py   routes, limits, JSON errors
    load.py     a bounded load test against 127.0.0.1
"""
from __future__ import annotations

import os

from temde.errors import TemdeError


class ServeError(TemdeError):
    """The service cannot start (the port is taken, an option does not fit the index)."""


def open_engine(index: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                data_dir: str | os.PathLike | None = None, device: str = "cpu", rerank: int = 0,
                verify: bool = True, uploads: bool = True, log=print):
    """Load the index, its model and what the page shows next to ids; each thing missing is a logged note."""
    from temde.index.two_stage import Searcher
    from temde.serve.engine import SearchEngine
    from temde.serve.gallery import gallery_for, read_manifest
    from temde.serve.upload import Featuriser, upload_support

    searcher = Searcher.open(index, checkpoint, data_dir, device, verify=verify)
    gallery = gallery_for(searcher, log)
    if rerank and gallery.captions is None:
        log(f"note: --rerank {rerank} is off: re-ranking reads the split's features from the data folder")
    featuriser = None
    if uploads:
        reason = upload_support(read_manifest(searcher.data_dir), searcher.index.meta.get("image_shape"))
        if reason is None:
            try:
                featuriser = Featuriser(device)
                featuriser.warm_up()
            except ImportError as exc:  # the feature network's packages are optional at run time
                reason, featuriser = f"the feature network cannot be loaded ({exc})", None
        log("uploads: " + ("on (pictures are featurised like the indexed images)" if reason is None
                           else f"off: {reason}"))
    engine = SearchEngine(searcher, gallery, rerank, featuriser)
    engine.pre_encode(log=log)
    return engine
