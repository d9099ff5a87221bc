"""Region features: preprocessing against hand-computed pixels, the network against a direct call, the cache."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from temde import features as F
from temde.errors import DataError
from temde.features import FeatureExtractor, UnreadableImagesError, decode_image


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def backbone():
    return F.load_backbone()


@pytest.fixture
def image_files(tmp_path):
    """Three small pictures: opaque JPEG, transparent PNG, palette GIF."""
    paths = []
    a = Image.new("RGB", (300, 200), (200, 30, 30))
    a.paste((20, 20, 220), (150, 0, 300, 200))
    paths.append(tmp_path / "a.jpg")
    a.save(paths[-1], quality=95)
    b = Image.new("RGBA", (120, 240), (0, 0, 0, 0))
    b.paste((10, 160, 10, 255), (20, 40, 100, 200))
    paths.append(tmp_path / "b.png")
    b.save(paths[-1])
    c = Image.new("P", (64, 64), 0)
    c.putpalette([255, 255, 0] + [0, 0, 0] * 255)
    c.paste(1, (16, 16, 48, 48))
    paths.append(tmp_path / "c.gif")
    c.save(paths[-1])
    return paths


# ---------------------------------------------------------------- preprocessing

def test_transparency_is_composited_on_white():
    alpha = 100
    image = Image.new("RGBA", (224, 224), (255, 0, 0, alpha))
    pixels = decode_image(encode(image))
    a = alpha / 255
    expected = np.array([255, 255 * (1 - a), 255 * (1 - a)])  # red over white, by hand
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels[112, 112].astype(float) - expected).max() <= 2


def test_wide_image_is_padded_with_white_not_cropped():
    image = Image.new("RGB", (400, 200), (0, 0, 0))  # 2:1 -> 224 x 112, placed at rows 56..167
    pixels = decode_image(encode(image)).astype(int)
    assert (pixels[:55] == 255).all() and (pixels[169:] == 255).all()
    assert (pixels[58:166] == 0).all()  # the whole width is kept: black from column 0 to 223
    assert (pixels[112, :] == 0).all()


def test_large_jpeg_is_reduced_while_decoding_and_keeps_colours():
    image = Image.new("RGB", (4000, 2000), (10, 200, 30))
    image.paste((250, 250, 0), (2000, 0, 4000, 2000))
    pixels = decode_image(encode(image, "JPEG", quality=95)).astype(int)
    assert np.abs(pixels[112, 50] - [10, 200, 30]).max() <= 6
    assert np.abs(pixels[112, 170] - [250, 250, 0]).max() <= 6
    assert (pixels[10, 112] >= 250).all()  # white padding above the 2:1 picture


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left (red) half ends up on top
    pixels = decode_image(encode(image, "JPEG", exif=exif)).astype(int)
    assert pixels[20, 112, 0] > 200 and pixels[20, 112, 2] < 60
    assert pixels[200, 112, 2] > 200 and pixels[200, 112, 0] < 60
    assert (pixels[112, 10] >= 250).all()  # now tall: padded left and right


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA"])
def test_huge_images_are_resized_band_by_band_to_the_same_pixels(monkeypatch, mode):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1000, 300, 4), dtype=np.uint8)
    pixels[..., 3] = rng.choice([0, 90, 255], (1000, 300))
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    monkeypatch.setattr(F, "_BAND_BYTES", 300 * 4 * 50)  # ~50-row bands: 20+ bands, the last one partial
    for target in [(67, 224), (30, 100), (300, 1000)]:
        expected = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)  # PIL's one-shot path
        np.testing.assert_array_equal(np.asarray(F._resize_huge(image, target)), np.asarray(expected))
    data = encode(image)
    ordinary = decode_image(data)
    monkeypatch.setattr(F, "_HUGE_PIXELS", 1000)  # now decode_image takes the banded path
    np.testing.assert_array_equal(decode_image(data), ordinary)


def test_oversized_image_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(F, "MAX_DECODE_PIXELS", 50 * 50)
    path = tmp_path / "big.png"
    Image.new("RGB", (60, 60)).save(path)
    with pytest.raises(ValueError, match="pixel limit"):
        F.load_image(path)
    with pytest.raises(UnreadableImagesError, match="big.png"):
        FeatureExtractor(cache_dir=None, progress=False).extract([path])


# ---------------------------------------------------------------- network

def test_features_match_a_direct_call_of_the_backbone(image_files, backbone):
    out = FeatureExtractor(batch_size=2, progress=False).extract(image_files)
    assert out.shape == (3, 49, 1280) and out.dtype == np.float32 and np.isfinite(out).all()
    # Independent path: numpy normalisation, the library's own forward, regions laid out row-major.
    pixels = np.stack([F.load_image(p) for p in image_files]).astype(np.float32) / 255
    x = (pixels - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        grid = backbone.extract_features(torch.from_numpy(x).permute(0, 3, 1, 2).float()).numpy()
    assert grid.shape == (3, 1280, 7, 7)
    for r in (0, 8, 48):
        np.testing.assert_allclose(out[:, r, :], grid[:, :, r // 7, r % 7], rtol=1e-4, atol=1e-4)
    # ReLU6 output: the features are bounded, and different pictures give different features.
    assert out.min() >= 0 and out.max() <= 6
    assert not np.allclose(out[0], out[1])


def test_batch_size_does_not_change_features(image_files):
    one = FeatureExtractor(batch_size=1, progress=False).extract(image_files)
    three = FeatureExtractor(batch_size=3, progress=False).extract(image_files)
    np.testing.assert_allclose(one, three, rtol=1e-4, atol=1e-4)


def test_second_run_reads_the_cache_without_the_network(image_files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = FeatureExtractor(cache_dir=cache, progress=False)
    expected = first.extract(image_files)
    assert first.images_computed == 3 and len(list(cache.rglob("*.npy"))) == 3

    def no_network(self, pixels):
        raise AssertionError("the network ran although every image is cached")

    monkeypatch.setattr(FeatureExtractor, "_network", no_network)
    second = FeatureExtractor(cache_dir=cache, progress=False)
    np.testing.assert_array_equal(second.extract(image_files), expected)
    assert second.images_computed == 0 and second._model is None

    # The key is the content: a renamed copy hits, changed bytes miss.
    copy = tmp_path / "renamed.png"
    copy.write_bytes(image_files[1].read_bytes())
    np.testing.assert_array_equal(second.extract([copy])[0], expected[1])
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image_files[1])
    with pytest.raises(AssertionError, match="network ran"):
        second.extract(image_files)


def test_cache_key_depends_on_bytes_model_and_size():
    a = FeatureExtractor(progress=False)
    assert a.cache_key(b"x") == a.cache_key(b"x") != a.cache_key(b"y")
    assert FeatureExtractor(image_size=256, progress=False).cache_key(b"x") != a.cache_key(b"x")


def test_unreadable_images_are_reported_by_name_after_the_readable_ones_are_cached(image_files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    missing = tmp_path / "missing.png"
    extractor = FeatureExtractor(cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match=r"2 unreadable images: .*broken\.png.*missing\.png") as info:
        extractor.extract([image_files[0], broken, image_files[2], missing])
    assert [index for index, _, _ in info.value.failures] == [1, 3]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_page_faults_of_reallocated_large_blocks():
    """Freeing and reallocating a 64 MB buffer faults all its pages in again under glibc's defaults (16k faults per
    round); with keep_freed_memory() the freed block is reused and the faults all but vanish."""
    import subprocess

    child = (
        "import ctypes, ctypes.util, resource, sys\n"
        "from temde.features import keep_freed_memory\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]\n"
        "if sys.argv[1] == 'tuned': assert keep_freed_memory()\n"
        "def touch():\n"
        "    block = libc.malloc(1 << 26); libc.memset(block, 1, 1 << 26); libc.free(block)\n"
        "touch()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(10): touch()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {mode: int(subprocess.run([sys.executable, "-c", child, mode], check=True, capture_output=True,
                                       text=True).stdout) for mode in ("default", "tuned")}
    pages = 10 * (1 << 26) // 4096  # ten 64 MB buffers of 4 KiB pages
    assert faults["default"] > 0.5 * pages
    assert faults["tuned"] < 0.05 * pages
