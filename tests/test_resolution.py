"""`--resolution 448|896`: the same EfficientNet-Lite0 gives 14x14 / 28x28 region grids, cached apart from 224's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from temde import features as F
from temde.cli import main
from temde.data.precomp import load_split
from temde.features import FeatureExtractor


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pictures(folder, n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = Image.new("RGB", (120, 80), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(i + 1):
            x, y = rng.integers(0, 90, 2)
            draw.rectangle((x, y, x + 25, y + 15), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        paths.append(folder / f"p{i}.png")
        image.save(paths[-1])
    return paths


def test_regions_per_resolution():
    assert [F.regions_for(size) for size in F.RESOLUTIONS] == [49, 196, 784]


def test_448_gives_196_regions_of_the_backbone_grid_cached_apart_from_224(tmp_path):
    paths = pictures(tmp_path / "images", 2)
    cache = tmp_path / "cache"
    out = FeatureExtractor(image_size=448, cache_dir=cache, progress=False).extract(paths)
    assert out.shape == (2, 196, 1280) and out.dtype == np.float32
    # Independent path: the pixels padded to 448, the library's forward, regions laid out row-major on 14 x 14.
    pixels = np.stack([F.load_image(p, 448) for p in paths]).astype(np.float32) / 255
    x = (pixels - np.array(F.IMAGENET_MEAN)) / np.array(F.IMAGENET_STD)
    with torch.no_grad():
        grid = F.load_backbone().extract_features(torch.from_numpy(x).permute(0, 3, 1, 2).float()).numpy()
    assert grid.shape == (2, 1280, 14, 14)
    for r in (0, 15, 195):
        np.testing.assert_allclose(out[:, r], grid[:, :, r // 14, r % 14], rtol=1e-4, atol=1e-4)
    # 224 computes its own entries (a 448 entry is never read back as a 224 one), and both stay readable.
    low = FeatureExtractor(cache_dir=cache, progress=False)
    assert low.extract(paths).shape == (2, 49, 1280) and low.images_computed == 2
    assert len(list(cache.rglob("*.npy"))) == 4
    again = FeatureExtractor(image_size=448, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.extract(paths), out)
    assert again.images_computed == 0


def test_896_gives_784_regions(tmp_path):
    out = FeatureExtractor(image_size=896, cache_dir=None, progress=False).extract(pictures(tmp_path, 1))
    assert out.shape == (1, 784, 1280) and np.isfinite(out).all()


def test_prepare_folder_resolution_448_writes_196_regions(tmp_path, capsys):
    paths = pictures(tmp_path / "images", 5)
    (tmp_path / "caps.tsv").write_text("".join(f"{p.name}\tpicture number {w}\n" for p, w in
                                               zip(paths, ["one", "two", "three", "four", "five"])))
    out = tmp_path / "out"
    assert main(["prepare", "folder", "--images", str(tmp_path / "images"), "--captions", str(tmp_path / "caps.tsv"),
                 "--out", str(out), "--dev", "1", "--test", "1", "--cache", str(tmp_path / "cache"),
                 "--device", "cpu", "--resolution", "448"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["image_size"], manifest["regions"]) == (448, 196)
    for name in ("train", "dev", "test"):
        assert load_split(out, name).images.shape[1:] == (196, 1280)


def test_resolution_outside_the_choices_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "folder", "--images", str(tmp_path), "--captions", str(tmp_path / "c.tsv"),
              "--out", str(tmp_path / "o"), "--resolution", "300"])
    assert "--resolution" in capsys.readouterr().err
