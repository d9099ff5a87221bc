"""The demo end to end on a tiny real pipeline: generated pictures -> `prepare folder` (real EfficientNet features,
grouped split) -> both poolings trained -> results.json, report.md and figures."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from temde.cli import main as cli_main
from temde.demo import DemoSettings, run_demo

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


def test_demo_end_to_end_on_a_tiny_prepared_folder(tiny_data, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "demo"
    settings = DemoSettings(out=str(out), data=str(tiny_data), seeds=[0], epochs=2, word_vectors="glove",
                            device="cpu", progress=False, dev_subset=None)
    results = run_demo(settings, log=lambda message: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved["data"]["test_images"] == 8 and saved["data"]["captions_per_image"] == 1
    for name in ("attention", "temde", "linear_dual_encoder"):
        metrics = saved[name]
        recalls = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
        # rsum is the sum of the six recalls, each a multiple of 100/8 on 8 test images
        assert metrics["rsum"]["mean"] == pytest.approx(sum(metrics[r]["mean"] for r in recalls))
        assert all(float(v / 12.5).is_integer() for r in recalls for v in metrics[r]["values"])
    # the saved test score matrix reproduces the reported metrics
    from temde.evaluation import evaluate

    sims = np.load(out / "runs" / "temde-seed0" / "test_sims.npy")
    assert evaluate(sims, 1)["rsum"] == pytest.approx(saved["temde"]["rsum"]["mean"])
    report = (out / "report.md").read_text()
    assert "| SAF + temde |" in report and "| chance |" in report
    # the report states the score the models were trained with (saf-small adds the global cosine)
    assert saved["variants"]["temde"]["model"]["global_score"] == 1.0
    assert "Score: SAF's score + 1 × cosine(image global, caption global)" in report
    for figure in ("curves.png", "examples.png", "sketch.png"):
        assert (out / figure).stat().st_size > 10_000
        assert figure in results["figures"]
    assert "One seed: nothing here separates" in report and "read differences under ~1.5x as noise" in report

    # The same request again reuses the finished runs; another one is refused before anything runs.
    import dataclasses

    from temde.outputs import OutputFolderError

    stamps = {run: (out / "runs" / run / "last.pt").stat().st_mtime_ns for run in ("attention-seed0", "temde-seed0")}
    again = run_demo(settings, log=lambda message: None)
    assert {run: (out / "runs" / run / "last.pt").stat().st_mtime_ns for run in stamps} == stamps
    assert again["temde"]["rsum"] == results["temde"]["rsum"]
    with pytest.raises(OutputFolderError, match=r"--epochs 3 \(recorded: 2\).*--force"):
        run_demo(dataclasses.replace(settings, epochs=3), log=lambda message: None)
    assert {run: (out / "runs" / run / "last.pt").stat().st_mtime_ns for run in stamps} == stamps


def test_report_calls_a_difference_within_noise_only_below_two_standard_errors():
    from temde.demo import mean_std
    from temde.demo_report import difference_note

    a, b = mean_std([150.0, 154.0, 146.0]), mean_std([140.0, 141.0, 142.0])  # std 4 and 1, three seeds each
    se = (16 / 3 + 1 / 3) ** 0.5  # 2.38, worked out by hand
    assert difference_note(a, b) == f"difference +9.0 ± {se:.1f}, beyond noise"  # 9.0 > 2 x 2.38
    close = mean_std([146.0, 147.0, 148.0])  # mean 147, std 1: -3.0 against a, |-3.0| < 2 x 2.38
    assert difference_note(close, a) == f"difference -3.0 ± {se:.1f}, within noise"
    assert difference_note(mean_std([150.0]), b) == "difference +9.0; one seed, noise not estimated"
