"""The demo end to end on a tiny real pipeline: generated pictures -> `prepare folder` (real EfficientNet features,
grouped split) -> `temde compare` under the demo's record -> results.json, report.md, compare.png; and the demo's
own data set: prepared once into the cache with the mode's sizes, reused while its record matches."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from temde.cli import main as cli_main
from temde.data import load_split
from temde.demo import FULL, QUICK, DemoSettings, demo_data_dir, run_demo

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": (8, 40), "right": (72, 40), "top": (40, 8), "bottom": (40, 72)}


def draw(shape, colour, place):
    image = Image.new("RGB", (128, 128), "white")
    pen = ImageDraw.Draw(image)
    x, y = PLACES[place]
    box = (x, y, x + 48, y + 48)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(x, y + 48), (x + 24, y), (x + 48, y + 48)], fill=COLOURS[colour])
    return image


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    images, lines = root / "images", []
    images.mkdir()
    for colour in COLOURS:
        for shape in SHAPES:
            for place in PLACES:
                name = f"{colour}_{shape}_{place}.png"
                draw(shape, colour, place).save(images / name)
                lines.append(f"{name}\ta {colour} {shape} on the {place}")
    (root / "captions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = root / "precomp"
    assert cli_main(["prepare", "folder", "--images", str(images), "--captions", str(root / "captions.tsv"),
                     "--out", str(out), "--dev", "8", "--test", "8", "--no-feature-cache", "--device", "cpu"]) == 0
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_end_to_end_on_a_tiny_prepared_folder(tiny_data, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--data", str(tiny_data), "--out", str(out), "--poolings", "temde,mean", "--seeds", "0,1",
            "--epochs", "2", "--jobs", "1", "--device", "cpu", "--quiet"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["demo"]["data"] == str(tiny_data) and results["settings"]["epochs"] == 2
    assert results["settings"]["batch_size"] == FULL.batch_size and results["settings"]["lr_update"] == FULL.lr_update
    split = results["splits"]["test"]
    assert set(split["models"]) == {"vse-small + temde", "vse-small + mean", "linear"}
    # each model's reported rsum is the mean over seeds of what its saved test ranks give
    test = load_split(tiny_data, "test")
    for pooling in ("temde", "mean"):
        rsums = []
        for seed in (0, 1):
            ranks = np.load(out / "runs" / f"vse-small-{pooling}-seed{seed}" / "ranks_test.npz")
            rsums.append(sum(100.0 * np.mean(ranks[d] < k) for d in ("i2t", "t2i") for k in (1, 5, 10)))
        assert split["models"][f"vse-small + {pooling}"]["metrics"]["rsum"]["mean"] == pytest.approx(np.mean(rsums))
    (comparison,) = [c for c in split["comparisons"] if c["against"] == "vse-small + mean"]
    assert comparison["low"] <= comparison["estimate"] <= comparison["high"]
    assert f"| vse-small + temde vs vse-small + mean | {comparison['estimate']:+.1f} |" in printed
    report = (out / "report.md").read_text()
    assert "training: 2 epochs, 128 per batch, lr x0.1 every 4 epochs" in report
    assert (out / "compare.png").stat().st_size > 10_000
    assert test.n_images == split["images"]

    # The same request again reuses every run; `temde compare` may not write into the demo's folder.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/last.pt")}
    assert cli_main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    capsys.readouterr()
    assert cli_main(["compare", "--data", str(tiny_data), "--out", str(out), "--quiet"]) == 2
    assert "a `temde demo` output, not a `temde compare` output" in capsys.readouterr().err


def test_demo_prepares_its_data_once_with_the_mode_sizes(tmp_path, monkeypatch):
    """The demo's data: the quick or full subset of the sources, prepared into the cache; a folder whose record
    and manifest match is reused without preparing again."""
    import temde.data.sources.combined as combined
    import temde.experiments.compare as compare
    from temde.data.sources.combined import source_settings
    from temde.features import IMAGE_SIZE
    from temde.outputs import write_record

    calls = []

    def fake_prepare(out, cache, sources, *, extractor, n_dev, n_test, seed, limit, force, log):
        calls.append({"out": out, "cache": cache, "sources": sources, "dev": n_dev, "test": n_test, "limit": limit})
        out.mkdir(parents=True)
        write_record(out, "prepare", source_settings(sources, n_dev, n_test, seed, limit, IMAGE_SIZE))
        (out / "manifest.json").write_text("{}")

    compared = []
    monkeypatch.setattr(combined, "prepare_sources", fake_prepare)
    monkeypatch.setattr(compare, "run_compare", lambda settings, log, **kw: compared.append(settings) or {})
    for quick, size in ((True, QUICK), (False, FULL)):
        settings = DemoSettings(out=str(tmp_path / "o"), quick=quick, cache=str(tmp_path / "cache"), progress=False)
        run_demo(settings, log=lambda message: None)
        run_demo(settings, log=lambda message: None)  # the second time: cached
        folder = demo_data_dir(tmp_path / "cache", quick)
        assert calls[-1] == {"out": folder, "cache": tmp_path / "cache", "sources": list(size.sources),
                             "dev": size.dev, "test": size.test, "limit": size.limit}
        assert [c.data for c in compared[-2:]] == [str(folder)] * 2
        assert compared[-1].seeds == list(size.seeds) and compared[-1].epochs == size.epochs
    assert len(calls) == 2  # one preparation per mode


def test_demo_refuses_bad_options_in_one_line(tmp_path, capsys):
    assert cli_main(["demo", "--out", str(tmp_path / "o"), "--poolings", "temde,nope", "--data", str(tmp_path)]) == 2
    assert "unknown pooling(s) nope" in capsys.readouterr().err
    assert cli_main(["demo", "--out", str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert "--jobs: expected a positive integer, got 0" in capsys.readouterr().err
