"""Uploaded pictures -> region features, exactly as `temde prepare` computed the indexed images' features.

Only an index whose data folder was prepared by this package (its manifest names the feature network, and the
index's images are 49 x 1280 regions) can take uploads: features from any other extractor would put the picture in
another space. The picture's header is read before anything is decoded, so a small file that claims a huge size
(a decompression bomb) is refused without allocating it.
"""
from __future__ import annotations

import io
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from temde.errors import TemdeError

# An upload is a photo or a drawing, not a scan: 40 Mpx covers any camera, and bounds the decoder's memory (~160 MB).
MAX_UPLOAD_PIXELS = 40_000_000


class UploadError(TemdeError, ValueError):
    """The upload is not an image this service can read (the client's fault: HTTP 400)."""


class UploadTooLarge(UploadError):
    """The upload is larger than the service accepts (HTTP 413)."""


def upload_support(manifest: dict | None, image_shape) -> str | None:
    """None when uploads can be featurised like the indexed images, else the reason they cannot."""
    from temde.features import FEATURE_DIM, IMAGE_SIZE, MODEL_NAME, REGIONS

    if manifest is None:
        return "the data folder has no manifest naming its feature network"
    if manifest.get("feature_model") != MODEL_NAME:
        return f"its features come from {manifest.get('feature_model') or 'an unknown network'}, not {MODEL_NAME}"
    if manifest.get("image_size", IMAGE_SIZE) != IMAGE_SIZE:
        return f"its features were computed at {manifest.get('image_size')} pixels, uploads at {IMAGE_SIZE}"
    if list(image_shape or []) != [REGIONS, FEATURE_DIM]:
        return f"its images are {image_shape} features, not {REGIONS} x {FEATURE_DIM} regions"
    return None


def check_header(data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the image header only; UploadError if it is no image, UploadTooLarge if it
    declares more than `max_pixels`."""
    from PIL import Image

    if not data:
        raise UploadError("empty upload: send the image file's bytes as the request body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about large images; the limit below decides
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header, decodes nothing
                fmt, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        raise UploadTooLarge(f"image is over the {max_pixels:,} pixel limit") from None
    except Exception:  # PIL raises many types for a file that is not an image
        raise UploadError("not an image PIL can read (send PNG, JPEG, GIF, WebP or BMP bytes)") from None
    if width * height > max_pixels:
        raise UploadTooLarge(f"image is {width}x{height} pixels, over the {max_pixels:,} pixel limit")
    return fmt, width, height


class Featuriser:
    """Image bytes -> [1, 49, 1280] float32 features through the package's own FeatureExtractor (no cache: an
    upload is seen once). The network is shared, so calls are serialised by a lock."""

    def __init__(self, device: str = "cpu", max_pixels: int = MAX_UPLOAD_PIXELS):
        from temde.features import FeatureExtractor

        self.extractor = FeatureExtractor(device=device, batch_size=1, cache_dir=None, workers=1, progress=False)
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the network now (the first upload should not wait for it) and check that it runs."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), "white").save(buffer, format="PNG")
        self.features(buffer.getvalue())

    def features(self, data: bytes) -> np.ndarray:
        from temde.features import UnreadableImagesError

        fmt, _, _ = check_header(data, self.max_pixels)
        # The extractor reads files: a private temporary one, gone when the request is answered.
        with tempfile.TemporaryDirectory(prefix="temde-upload-") as folder:
            path = Path(folder) / f"upload.{(fmt or 'img').lower()}"
            path.write_bytes(data)
            try:
                with self._lock:
                    return self.extractor.extract([path])
            except UnreadableImagesError as exc:  # a truncated or corrupt body that passed the header check
                reason = exc.failures[0][2] if exc.failures else "unreadable"
                raise UploadError(f"image cannot be decoded ({reason})") from None
