"""`temde compare` end to end on a tiny data set with two test splits: runs, per-split ranks, intervals, report,
reuse of finished runs, and the refusal of a folder made with other settings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from temde.cli import main as cli_main
from temde.data import load_split, write_split
from temde.evaluation import evaluate

WORDS = ["red", "green", "blue", "cat", "dog", "tree", "car", "boat", "sun", "moon"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Images show 2 of 10 objects; 1-3 captions per image name them (a caption->image index)."""
    root = tmp_path_factory.mktemp("compare-data")
    rng = np.random.default_rng(0)
    prototypes = rng.standard_normal((len(WORDS), 12)).astype(np.float32)
    for split, n in (("train", 60), ("dev", 12), ("test_a", 12), ("test_b", 10)):
        images = 0.3 * rng.standard_normal((n, 4, 12)).astype(np.float32)
        captions, owner = [], []
        for i in range(n):
            objects = rng.choice(len(WORDS), 2, replace=False)
            images[i, :2] += prototypes[objects]
            for _ in range(rng.integers(1, 4)):
                captions.append(" ".join(WORDS[w] for w in rng.permutation(objects)))
                owner.append(i)
        write_split(root, split, images, captions, caption_images=np.array(owner))
    return root


def test_compare_runs_scores_every_test_split_and_reports_intervals(data, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(data), "--out", str(out), "--hosts", "vse-small", "--poolings", "temde,mean",
            "--seeds", "0,1", "--epochs", "2", "--resamples", "200", "--device", "cpu", "--quiet"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["splits"]) == {"test_a", "test_b"}
    for split in ("test_a", "test_b"):
        result = results["splits"][split]
        assert set(result["models"]) == {"vse-small + temde", "vse-small + mean", "linear"}
        # Each run's saved ranks give the metrics a fresh evaluation of its checkpoint gives.
        test = load_split(data, split)
        for seed in (0, 1):
            ranks = np.load(out / "runs" / f"vse-small-temde-seed{seed}" / f"ranks_{split}.npz")
            assert len(ranks["i2t"]) == test.n_images and len(ranks["t2i"]) == test.n_captions
        rsums = result["models"]["vse-small + mean"]["metrics"]["rsum"]["values"]
        assert len(rsums) == 2
        against = {c["against"]: c for c in result["comparisons"]}
        assert set(against) == {"vse-small + mean", "linear"}
        gap = against["linear"]
        expected = (result["models"]["vse-small + temde"]["metrics"]["rsum"]["mean"]
                    - result["models"]["linear"]["metrics"]["rsum"]["mean"])
        assert gap["estimate"] == pytest.approx(expected)
        assert gap["low"] <= gap["estimate"] <= gap["high"]
        assert gap["verdict"] == ("ahead" if gap["low"] > 0 else "behind" if gap["high"] < 0 else "level")
        assert f"### {split}" in printed
    report = (out / "report.md").read_text()
    assert "95% paired interval" in report and (out / "compare.png").stat().st_size > 0

    # Same request: nothing retrained, same numbers. Other settings: refused, naming --force.
    assert cli_main(args) == 0
    assert json.loads((out / "results.json").read_text())["splits"] == results["splits"]
    assert cli_main([a if a != "2" else "3" for a in args]) == 2  # --epochs 3
    assert "--force" in capsys.readouterr().err


def test_metrics_of_saved_ranks_equal_evaluate(data, tmp_path):
    """The per-run ranks are those of the run's score matrix: checked for one run against evaluate()."""
    from temde.scoring import encode_split, score_matrix
    from temde.training import load_checkpoint, restore_model, restore_vocab
    from temde.experiments.compare import CompareSettings, run_compare

    out = tmp_path / "one"
    run_compare(CompareSettings(data=str(data), out=str(out), hosts=["vse-small"], poolings=["temde"], seeds=[0],
                                epochs=1, resamples=100, progress=False), log=lambda *_: None)
    run = out / "runs" / "vse-small-temde-seed0"
    checkpoint = load_checkpoint(run / "best.pt")
    model = restore_model(checkpoint)
    test = load_split(data, "test_b")
    sims = score_matrix(model, *encode_split(model, test, restore_vocab(checkpoint)))
    results = json.loads((out / "results.json").read_text())
    metrics = results["splits"]["test_b"]["models"]["vse-small + temde"]["metrics"]
    for key, value in evaluate(sims, test.layout).items():
        assert metrics[key]["mean"] == pytest.approx(value)


def test_bad_requests_are_one_line(data, tmp_path, capsys):
    assert cli_main(["compare", "--data", str(data), "--out", str(tmp_path / "x"), "--test-splits", "test_z"]) == 2
    assert "no test split ['test_z']" in capsys.readouterr().err
    assert cli_main(["compare", "--data", str(data), "--out", str(tmp_path / "y"), "--poolings", "mean",
                     "--reference", "temde"]) == 2
    assert "reference pooling 'temde'" in capsys.readouterr().err


def test_parallel_jobs_give_the_runs_one_job_gives(data, tmp_path, monkeypatch):
    """--jobs 2 trains the same runs (1 torch thread each, as here) in worker processes: identical ranks."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # workers get 2 // 2 = 1 thread, like this process
    common = ["--data", str(data), "--hosts", "vse-small", "--poolings", "temde,max", "--seeds", "0,1",
              "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "3", "--resamples", "100",
              "--device", "cpu", "--quiet"]
    assert cli_main(["compare", "--out", str(tmp_path / "one"), *common]) == 0
    assert cli_main(["compare", "--out", str(tmp_path / "two"), "--jobs", "2", *common]) == 0
    for pooling in ("temde", "max"):
        for seed in (0, 1):
            run = f"vse-small-{pooling}-seed{seed}"
            # The loss and every dev metric per epoch (the last two columns are wall-clock seconds).
            rows = [[line.split(",")[:-2] for line in (tmp_path / folder / "runs" / run / "epochs.csv")
                     .read_text().splitlines()] for folder in ("one", "two")]
            assert rows[0] == rows[1] and len(rows[0]) == 2
            for split in ("test_a", "test_b"):
                one = np.load(tmp_path / "one" / "runs" / run / f"ranks_{split}.npz")
                two = np.load(tmp_path / "two" / "runs" / run / f"ranks_{split}.npz")
                assert np.array_equal(one["i2t"], two["i2t"]) and np.array_equal(one["t2i"], two["t2i"])
    first = json.loads((tmp_path / "one" / "results.json").read_text())["splits"]["test_a"]["comparisons"]
    second = json.loads((tmp_path / "two" / "results.json").read_text())["splits"]["test_a"]["comparisons"]
    assert [c["estimate"] for c in first] == [c["estimate"] for c in second]


def test_compare_refuses_a_non_positive_budget(data, tmp_path, capsys):
    assert cli_main(["compare", "--data", str(data), "--out", str(tmp_path / "x"), "--jobs", "0"]) == 2
    assert "--jobs: expected a positive integer, got 0" in capsys.readouterr().err


def test_ablation_intervals_compare_each_variant_with_the_reference(tmp_path):
    """`temde ablate` reads the saved test ranks of every run: a variant that ranks every query first is ahead of
    one that never reaches the top 10 by exactly 600 rsum, whatever the resample."""
    from temde.bench.ablate import format_intervals, variant_intervals
    from temde.experiments.compare import save_ranks
    from temde.bootstrap import Ranks

    data = tmp_path / "data"
    owner = np.array([0, 0, 1, 2, 2, 2, 3, 4])  # 5 images, 1-3 captions each
    write_split(data, "test", np.zeros((5, 2, 3), np.float32), [f"c{i}" for i in range(8)], caption_images=owner)
    perfect, lost = Ranks(np.zeros(5, int), np.zeros(8, int)), Ranks(np.full(5, 20), np.full(8, 20))
    for name, ranks in (("temde", perfect), ("mean", lost)):
        for seed in (0, 1):
            (tmp_path / "out" / "runs" / f"{name}-seed{seed}").mkdir(parents=True)
            save_ranks(tmp_path / "out" / "runs" / f"{name}-seed{seed}" / "ranks_test.npz", ranks)
    result = variant_intervals(tmp_path / "out", ["temde", "mean"], [0, 1], str(data), "test", "temde", 200)
    assert result["variants"]["temde"]["rsum_interval"]["estimate"] == 600.0
    difference = result["variants"]["mean"]["against_reference"]
    assert (difference["estimate"], difference["low"], difference["high"]) == (600.0, 600.0, 600.0)
    assert difference["verdict"] == "ahead" and "against_reference" not in result["variants"]["temde"]
    assert "| mean | 0.0 [0.0, 0.0] | +600.0 | [+600.0, +600.0] | ahead |" in format_intervals(result)


def test_the_record_holds_each_poolings_recipe_so_a_changed_recipe_is_not_reused(tmp_path, monkeypatch):
    from temde.experiments.compare import CompareSettings
    from temde.models import registry
    from temde.outputs import claim_folder

    presets = {"vse-small": json.loads((registry.PRESET_DIR / "vse-small.json").read_text()),
               "saf-small": json.loads((registry.PRESET_DIR / "saf-small.json").read_text())}
    settings = CompareSettings(data=str(tmp_path), hosts=["vse-small", "saf-small"], poolings=["temde", "gpo"],
                               pool_options={"gpo": {"d_pe": 16}})
    recipes = settings.recorded()["recipes"]
    for host, preset in presets.items():  # the preset files' own recipes, read here independently
        assert recipes[host]["temde"] == preset.get("pool_defaults", {}).get("temde", {})
        assert recipes[host]["gpo"] == {"d_pe": 16}  # given options replace the preset's recipe
    out = tmp_path / "cmp"
    claim_folder(out, "compare", settings.recorded())
    changed = dict(presets["vse-small"], pool_defaults={"temde": {"n_bits": 4}})
    original = registry.load_preset
    monkeypatch.setattr(registry, "load_preset",
                        lambda name: changed if name == "vse-small" else original(name))
    assert settings.recorded()["recipes"]["vse-small"]["temde"] == {"n_bits": 4}
    with pytest.raises(Exception, match="--force|settings"):
        claim_folder(out, "compare", settings.recorded())


def test_pool_options_replace_the_presets_recipe_in_every_run(data, tmp_path, capsys):
    from temde.models.registry import PRESET_DIR

    common = ["--data", str(data), "--hosts", "vse-small", "--poolings", "temde", "--seeds", "0", "--epochs", "1",
              "--batch-size", "16", "--max-steps-per-epoch", "2", "--resamples", "100", "--device", "cpu", "--quiet"]
    assert cli_main(["compare", "--out", str(tmp_path / "recipe"), *common]) == 0
    assert cli_main(["compare", "--out", str(tmp_path / "given"), "--pool-option", "temde:mean_weight=0",
                     "--pool-option", "temde:n_bits=3", *common]) == 0

    def trained_options(folder):
        return json.loads((tmp_path / folder / "runs" / "vse-small-temde-seed0" / "config.json")
                          .read_text())["model"]["pool_options"]

    preset = json.loads((PRESET_DIR / "vse-small.json").read_text())
    assert trained_options("recipe") == preset["pool_defaults"]["temde"]
    assert trained_options("given") == {"mean_weight": 0, "n_bits": 3}
    capsys.readouterr()
    assert cli_main(["compare", "--out", str(tmp_path / "x"), "--pool-option", "gpo:d_pe=8", *common]) == 2
    assert "'gpo' is not among the poolings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["compare", "--out", str(tmp_path / "x"), "--pool-option", "mean_weight=0", *common])
    assert "POOLING:KEY=VALUE" in capsys.readouterr().err
