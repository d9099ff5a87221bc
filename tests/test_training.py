"""Short CPU trainings on a synthetic precomp folder with a learnable signal; resume; the train/eval CLI."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from temde.cli import main as cli_main
from temde.data import load_split
from temde.errors import CheckpointError, TemdeError
from temde.evaluation import chance_rsum, evaluate
from temde.scoring import encode_split, score_matrix
from temde.training import TrainSettings, load_checkpoint, restore_model, restore_vocab, train

WORDS = ["red", "green", "blue", "small", "big", "round", "square", "cat", "dog", "tree", "car", "boat",
         "sun", "moon", "star", "fish"]
N_DEV, K = 40, 2


def make_precomp(folder, n_train=200, n_dev=N_DEV, k=K, regions=6, dim=16, words_per_image=3, seed=0):
    """Each image shows 3 of 16 "objects": a region holds the object's prototype vector (plus noise everywhere)
    and its captions name the same 3 objects in random order. Learnable, and every image is distinguishable."""
    from temde.data import write_split

    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((len(WORDS), dim)).astype(np.float32)
    for name, n in (("train", n_train), ("dev", n_dev)):
        images = 0.3 * rng.standard_normal((n, regions, dim)).astype(np.float32)
        captions = []
        for i in range(n):
            objects = rng.choice(len(WORDS), words_per_image, replace=False)
            images[i, rng.choice(regions, words_per_image, replace=False)] += prototypes[objects]
            captions += ["a " + " ".join(WORDS[w] for w in rng.permutation(objects)) + " picture" for _ in range(k)]
        write_split(folder, name, images, captions)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_precomp(tmp_path_factory.mktemp("precomp"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(model="saf-small", embed_size=32, model_overrides={"sim_dim": 16, "word_dim": 16}, batch_size=32,
            progress=False, log_every=5)


@pytest.mark.parametrize("pooling", ["attention", "temde"])
def test_dev_rsum_rises_well_above_chance(data_dir, tmp_path, pooling):
    settings = TrainSettings(data=str(data_dir), out=str(tmp_path / "run"), pooling=pooling, epochs=12, lr=3e-3,
                             max_violation=False, **{**TINY, "model_overrides": {**TINY["model_overrides"],
                                                                                   "word_dropout": 0.0}})
    result = train(settings)
    chance = chance_rsum(N_DEV, K)  # about 78
    rsums = [h["rsum"] for h in result["history"]]
    assert len(rsums) == 12 and result["best_rsum"] == max(rsums)
    assert result["best_rsum"] > max(250.0, 3 * chance), rsums
    assert np.mean(rsums[-3:]) > np.mean(rsums[:3]) + 100, rsums
    if pooling == "temde":  # data-driven DLSH biases were fitted before training
        assert result["pools_initialised"] == ["image", "caption"]

    # best.pt rebuilds the model on its own and reproduces the dev rsum recorded for its epoch.
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["config"]["pooling"] == pooling and best["extra"]["best_rsum"] == result["best_rsum"]
    model = restore_model(best)
    split = load_split(data_dir, "dev")
    img, cap = encode_split(model, split, restore_vocab(best), 64, "cpu")
    assert evaluate(score_matrix(model, img, cap, 16, 32, "cpu"), K)["rsum"] == pytest.approx(result["best_rsum"])


def _epoch_rows(path):
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in csv.DictReader(handle)]


def test_resume_gives_the_same_run(data_dir, tmp_path):
    # Dropout stays on (word_dropout 0.4, attention dropout): the resumed run must restore the RNG to match.
    base = TrainSettings(data=str(data_dir), out="", epochs=3, lr=1e-3, train_subset=64, dev_subset=20, **TINY)
    straight = train(dataclasses.replace(base, out=str(tmp_path / "straight")))

    class Killed(Exception):
        pass

    def kill_at_epoch_2(model, epoch):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(dataclasses.replace(base, out=str(tmp_path / "resumed"), on_epoch_start=kill_at_epoch_2))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["extra"]["epoch"] == 1
    resumed = train(dataclasses.replace(base, out=str(tmp_path / "resumed"), resume=True))

    strip = lambda history: [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]
    assert strip(resumed["history"]) == strip(straight["history"])
    assert resumed["steps"] == straight["steps"] and resumed["best_epoch"] == straight["best_epoch"]
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for run in ("straight", "resumed"):
        assert len(_epoch_rows(tmp_path / run / "epochs.csv")) == 3
    assert _epoch_rows(tmp_path / "straight" / "epochs.csv") == _epoch_rows(tmp_path / "resumed" / "epochs.csv")
    assert _epoch_rows(tmp_path / "straight" / "steps.csv") == _epoch_rows(tmp_path / "resumed" / "steps.csv")


def test_run_folder_guards(data_dir, tmp_path):
    from temde.outputs import OutputFolderError

    base = TrainSettings(data=str(data_dir), out=str(tmp_path / "run"), epochs=1, train_subset=32, dev_subset=10,
                         max_steps_per_epoch=1, **TINY)
    train(base)
    with pytest.raises(OutputFolderError, match="holds a run.*--resume.*--force"):
        train(base)  # never overwrite a run silently
    with pytest.raises(CheckpointError, match="embed_size 16 \\(the run: 32\\)"):
        train(dataclasses.replace(base, resume=True, epochs=2, embed_size=16))
    # every contradicting setting is named at once, by its command-line flag
    with pytest.raises(CheckpointError, match="--resume") as refused:
        train(dataclasses.replace(base, resume=True, lr=0.5, seed=3, train_subset=16))
    message = str(refused.value)
    assert "--lr 0.5 (the run: 0.001)" in message and "--seed 3 (the run: 0)" in message
    assert "--train-subset 16 (the run: 32)" in message and "\n" not in message
    result = train(dataclasses.replace(base, resume=True, epochs=2))  # extending a finished run, explicitly
    assert [h["epoch"] for h in result["history"]] == [1, 2] and result["steps"] == 2
    with pytest.raises(CheckpointError, match="--epochs 1 \\(the run has trained 2 already\\)"):
        train(dataclasses.replace(base, resume=True, epochs=1))
    # left-out settings are the run's: no --epochs means the run's 2, a finished run; no --train-subset, its 32
    again = train(dataclasses.replace(base, resume=True, epochs=None, train_subset=None))
    assert again["epochs"] == 2 and again["steps"] == 2
    with pytest.raises(TemdeError, match="unknown model"):
        train(dataclasses.replace(base, out=str(tmp_path / "other"), model="nope"))


def test_resume_without_a_run_and_foreign_folders_are_refused(data_dir, tmp_path):
    from temde.outputs import OutputFolderError

    base = TrainSettings(data=str(data_dir), out=str(tmp_path / "new"), epochs=1, train_subset=32, dev_subset=10,
                         max_steps_per_epoch=1, **TINY)
    with pytest.raises(CheckpointError, match="--resume: .*last.pt not found \\(no run there\\)"):
        train(dataclasses.replace(base, resume=True))
    assert not (tmp_path / "new").exists()  # a refusal leaves nothing behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine\n")
    with pytest.raises(OutputFolderError, match="not a `temde train` output folder"):
        train(dataclasses.replace(base, out=str(tmp_path / "notes")))
    with pytest.raises(OutputFolderError, match="not a `temde train` output folder"):
        train(dataclasses.replace(base, out=str(tmp_path / "notes"), force=True))  # --force never takes it
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]


def test_force_starts_the_run_over(data_dir, tmp_path):
    base = TrainSettings(data=str(data_dir), out=str(tmp_path / "run"), epochs=2, train_subset=32, dev_subset=10,
                         max_steps_per_epoch=1, **TINY)
    train(base)
    result = train(dataclasses.replace(base, epochs=1, seed=5, force=True))
    assert [h["epoch"] for h in result["history"]] == [1] and result["steps"] == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["extra"]["settings"]["seed"] == 5
    assert len(_epoch_rows(tmp_path / "run" / "epochs.csv")) == 1  # the old run's rows are gone


def test_ctrl_c_says_which_epoch_is_saved_and_how_to_continue(data_dir, tmp_path, capsys, monkeypatch):
    import shlex

    from temde.training import loop

    real, calls = loop.dev_metrics, []

    def interrupted_in_epoch_2(*args, **kwargs):  # Ctrl-C while epoch 2 is being evaluated
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "dev_metrics", interrupted_in_epoch_2)
    out = tmp_path / "run dir"  # a space: the printed command must quote it
    argv = ["train", "--data", str(data_dir), "--out", str(out), "--epochs", "3", "--batch-size", "32",
            "--embed-size", "32", "--set", "sim_dim=16", "--set", "word_dim=16", "--train-subset", "32",
            "--dev-subset", "20", "--max-steps-per-epoch", "1"]
    assert cli_main(argv) == 130
    err = capsys.readouterr().err
    assert "\ninterrupted\n" in err  # on a line of its own, after the progress bar
    assert f"{out / 'last.pt'} holds epoch 1 of 3; continue with: " in err
    command = shlex.split(err.split("continue with: ")[1].strip())
    assert command[0] == "temde" and command[1:] == argv + ["--resume"]
    monkeypatch.setattr(loop, "dev_metrics", real)
    assert cli_main(command[1:] + ["--quiet"]) == 0  # the printed command finishes the run
    assert [int(row["epoch"]) for row in _epoch_rows(out / "epochs.csv")] == [1, 2, 3]
    printed = capsys.readouterr().out
    assert f"(chance {chance_rsum(20, K):.1f})" in printed  # the final line sets dev rsum against chance


def test_cli_train_then_eval_and_ensemble(data_dir, tmp_path, capsys):
    common = ["--data", str(data_dir), "--epochs", "1", "--batch-size", "32", "--embed-size", "32",
              "--set", "sim_dim=16", "--set", "word_dim=16", "--train-subset", "32", "--dev-subset", "20", "--quiet"]
    assert cli_main(["train", "--out", str(tmp_path / "a"), "--model", "saf-small", "--pooling", "temde",
                     "--pool-option", "n_bits=3", *common]) == 0
    assert cli_main(["train", "--out", str(tmp_path / "b"), "--model", "sgr-small", "--pooling", "mean",
                     "--seed", "1", *common]) == 0
    assert load_checkpoint(tmp_path / "a" / "best.pt")["config"]["pool_options"] == {"n_bits": 3}

    out = tmp_path / "metrics.json"
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "a" / "best.pt"), "--checkpoint",
                     str(tmp_path / "b" / "best.pt"), "--data", str(data_dir), "--split", "dev", "--fold5",
                     "--json", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    # Independent computation: the mean of the two models' score matrices, evaluated per fold of 8 images.
    split = load_split(data_dir, "dev")
    mats = []
    for run in ("a", "b"):
        ckpt = load_checkpoint(tmp_path / run / "best.pt")
        model = restore_model(ckpt)
        img, cap = encode_split(model, split, restore_vocab(ckpt), 64, "cpu")
        mats.append(score_matrix(model, img, cap, 64, 64, "cpu").astype(np.float64))
    mean = (mats[0] + mats[1]) / 2
    folds = [evaluate(mean[f * 8:(f + 1) * 8, f * 16:(f + 1) * 16], K) for f in range(5)]
    assert report["folds"] == 5 and len(report["per_fold"]) == 5
    assert report["metrics"]["rsum"] == pytest.approx(np.mean([m["rsum"] for m in folds]))
    assert "rsum" in capsys.readouterr().out


def test_cli_eval_global_score_reweights_a_trained_checkpoint(data_dir, tmp_path, capsys):
    assert cli_main(["train", "--data", str(data_dir), "--out", str(tmp_path / "a"), "--model", "saf-small",
                     "--pooling", "mean", "--set", "global_score=0", "--global-loss", "0", "--epochs", "1",
                     "--batch-size", "32",
                     "--embed-size", "32", "--set", "sim_dim=16", "--set", "word_dim=16", "--train-subset", "32",
                     "--dev-subset", "20", "--quiet"]) == 0
    out = tmp_path / "metrics.json"
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "a" / "best.pt"), "--data", str(data_dir), "--split",
                     "dev", "--global-score", "2.5", "--json", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    # Independent computation: the checkpoint's own (head-only) scores plus 2.5 x the cosine of the globals.
    split = load_split(data_dir, "dev")
    ckpt = load_checkpoint(tmp_path / "a" / "best.pt")
    assert ckpt["config"]["global_score"] == 0
    model = restore_model(ckpt)
    img, cap = encode_split(model, split, restore_vocab(ckpt), 64, "cpu")
    head = score_matrix(model, img, cap, 64, 64, "cpu").astype(np.float64)
    g_img, g_cap = img.global_.double().numpy(), cap.global_.double().numpy()
    cosine = (g_img / np.linalg.norm(g_img, axis=1, keepdims=True)) @ \
        (g_cap / np.linalg.norm(g_cap, axis=1, keepdims=True)).T
    expected = evaluate(head + 2.5 * cosine, K)
    assert report["global_score"] == 2.5
    assert report["metrics"]["rsum"] == pytest.approx(expected["rsum"])
    assert expected["rsum"] != pytest.approx(evaluate(head, K)["rsum"])  # the weight changed the ranking
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(["eval", "--checkpoint", str(tmp_path / "a" / "best.pt"), "--data", str(data_dir),
                  "--global-score", "-1"])
    assert exc.value.code == 2 and "--global-score" in capsys.readouterr().err


def test_cli_errors_are_one_line(data_dir, tmp_path, capsys):
    assert cli_main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("temde train: error:") and "\n" not in err and "missing" in err
    assert cli_main(["train", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "temde train: error: epochs: expected a positive integer, got 0"
    (tmp_path / "bad.pt").write_bytes(b"junk")
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "bad.pt"), "--data", str(data_dir), "--split",
                     "dev"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("temde eval: error:") and "\n" not in err and "bad.pt" in err


def test_temperature_annealing_reaches_every_temde_pool(data_dir, tmp_path):
    settings = TrainSettings(data=str(data_dir), out=str(tmp_path / "run"), pooling="temde", epochs=3,
                             temperature_anneal=(1.0, 0.01), train_subset=32, dev_subset=10, max_steps_per_epoch=1,
                             **TINY)
    result = train(settings)
    assert [h["temperature"] for h in result["history"]] == pytest.approx([1.0, 0.1, 0.01])  # geometric
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    temperatures = [v.item() for k, v in state.items() if k.endswith("temperature")]
    assert len(temperatures) == 2 and temperatures == pytest.approx([0.01, 0.01])


def test_word_vectors_from_a_glove_text_file(tmp_path):
    from temde.data import Vocabulary
    from temde.errors import DataError
    from temde.training.loop import load_word_vectors

    vocab = Vocabulary(["cat", "dog", "tree"])
    path = tmp_path / "vectors.txt"
    path.write_text("dog 1 2 3\nzebra 9 9 9\ncat -1 0 0.5\n", encoding="utf-8")
    table = load_word_vectors(str(path), vocab, 3)
    assert table.shape == (len(vocab), 3)
    assert table[vocab.word2idx["dog"]].tolist() == [1, 2, 3]
    assert table[vocab.word2idx["cat"]].tolist() == [-1, 0, 0.5]
    assert table[vocab.word2idx["tree"]].abs().max() <= 0.1  # not in the file: SGRAF's uniform init
    with pytest.raises(DataError, match="word_dim"):
        load_word_vectors(str(path), vocab, 4)
    with pytest.raises(DataError, match="missing.txt"):
        load_word_vectors(str(tmp_path / "missing.txt"), vocab, 3)


def test_csv_logger_header_once_and_resume_truncation(tmp_path, monkeypatch):
    import sys

    from temde.training.logging import CSVLogger, RunLogger, TensorBoardLogger

    path = tmp_path / "log.csv"
    CSVLogger(path).log({"epoch": 1, "loss": 0.5})
    CSVLogger(path).log({"epoch": 2, "loss": 0.25})  # a new logger on the same file appends, no second header
    assert path.read_text().splitlines() == ["epoch,loss", "1,0.5", "2,0.25"]
    with pytest.raises(ValueError, match="rsum"):
        CSVLogger(path).log({"epoch": 3, "rsum": 1.0})
    run = RunLogger(tmp_path)
    for epoch in (1, 2, 3):
        run.log_step(epoch * 10, {"epoch": epoch, "loss": 1.0})
        run.log_epoch(epoch, {"rsum": 10.0 * epoch})
    run.truncate(2)
    assert [r.split(",")[0] for r in (tmp_path / "epochs.csv").read_text().splitlines()] == ["epoch", "1", "2"]
    assert [r.split(",")[0] for r in (tmp_path / "steps.csv").read_text().splitlines()] == ["step", "10", "20"]
    # TensorBoard missing: a warning and a logger that does nothing.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.warns(UserWarning, match="TensorBoard"):
        board = TensorBoardLogger(tmp_path / "tb")
    board.log(1, {"rsum": 1.0}, "dev")
    board.close()


def test_one_recipe_the_preset_gives_temde_its_options_and_global_loss():
    """`temde train --model saf-small --pooling temde` trains the recipe the ablations chose (residual sketch,
    global loss 1.0); `temde compare` and `temde demo` pass no pool options of their own, so they train it too."""
    from temde.experiments.compare import CompareSettings
    from temde.training.loop import resolve_model

    def resolve(**settings):
        return resolve_model(TrainSettings(data="d", out="o", **settings), 12, 30)

    config, hyper = resolve(model="saf-small", pooling="temde")
    assert config.pool_options == {"residual": True} and hyper["global_loss"] == 1.0
    config, hyper = resolve(model="saf-small", pooling="temde", pool_options={"n_bits": 4}, global_loss=0.0)
    assert config.pool_options == {"n_bits": 4} and hyper["global_loss"] == 0.0
    config, hyper = resolve(model="saf-f30k", pooling="temde")
    assert config.pool_options == {} and hyper["global_loss"] == 0.0  # SGRAF's published recipe has neither
    assert CompareSettings(data="d").pool_options == {}
