"""Parity with SGRAF's own code: train SAF and SGR briefly with Paranioar/SGRAF's model.py, save them as its
train.py does, evaluate them with its evaluation.py, then import them with `temde import sgraf` and evaluate
them with `temde eval`. Prints both results and exits non-zero on any difference.

    python benchmarks/sgraf_parity.py --sgraf PATH_TO_SGRAF_CLONE [--work DIR] [--steps 30]

SGRAF's files are Python 2 era and CUDA-only; they are read from the clone and run with the smallest patches
that let them run on a CPU under Python 3 (listed in PATCHES, each a literal text replacement). Its
`nltk.word_tokenize` needs NLTK's punkt data: when that is not installed it is replaced by
NLTKWordTokenizer — the tokenizer temde uses then too — and the script says so.

The data are synthetic precomp files (BUTD-shaped: 36 regions per image, 5 captions per image) whose captions
have punctuation, possessives and hyphenated words, with a SCAN-style vocab json that leaves some words out.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

PATCHES = {
    "model.py": [
        ("cap_emb[:, :, :cap_emb.size(2)/2] + cap_emb[:, :, cap_emb.size(2)/2:]",
         "cap_emb[:, :, :cap_emb.size(2)//2] + cap_emb[:, :, cap_emb.size(2)//2:]"),  # Python 3 division
        ("if torch.cuda.is_available():\n            I = mask.cuda()", "I = mask.to(scores.device)"),  # CPU
    ],
    "data.py": [
        ("img_id = index/self.im_div", "img_id = index//self.im_div"),
        ("str(caption).lower().decode('utf-8')", "caption.decode('utf-8').lower()"),  # bytes under Python 3
    ],
    "evaluation.py": [
        (".float().cuda()", ".float()"),
        ("checkpoint = torch.load(model_path)", "checkpoint = torch.load(model_path, weights_only=False)"),
        # A tuple of ids was a list index in the numpy of its day; now it would be one index per axis.
        ("img_embs[ids] = img_emb", "img_embs[list(ids)] = img_emb"),
        ("cap_embs[ids, :max(lengths), :] = cap_emb", "cap_embs[list(ids), :max(lengths), :] = cap_emb"),
    ],
}
CONTENT = ["man", "woman", "dog", "child", "street", "ball", "red", "white-walled", "house", "blue", "car",
           "girl", "boy's", "shirt", "big", "small", "water", "tree", "bike", "cat"]
FILLER = ["with", "on", "the", "a", "near", "runs", "plays", "and"]
LEFT_OUT = {"water", "blue"}  # in captions, not in the vocab json: they map to <unk>


def load_sgraf(root: Path) -> dict[str, types.ModuleType]:
    """SGRAF's model, data, vocab and evaluation modules, patched (see PATCHES), under their own names."""
    modules = {}
    for name in ("vocab", "model", "data", "evaluation"):
        source = (root / f"{name}.py").read_text(encoding="utf-8")
        for old, new in PATCHES.get(f"{name}.py", []):
            if old not in source:
                raise SystemExit(f"{root / name}.py: expected text not found, cannot patch: {old!r}")
            source = source.replace(old, new)
        module = types.ModuleType(name)
        module.__file__ = str(root / f"{name}.py")
        sys.modules[name] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        modules[name] = module
    return modules


def punkt_available() -> bool:
    import nltk

    for resource in ("tokenizers/punkt_tab/english/", "tokenizers/punkt/english.pickle"):
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            pass
    return False


def caption(rng: np.random.Generator, concepts: list[str]) -> str:
    """A caption that names the image's concepts among filler words, with commas, periods and capitals."""
    words = list(concepts) + list(rng.choice(FILLER, size=rng.integers(2, 6)))
    words = [words[i] for i in rng.permutation(len(words))]
    if rng.random() < 0.5:
        words[rng.integers(len(words))] += ","
    text = " ".join(words)
    return text[0].upper() + text[1:] + ("." if rng.random() < 0.7 else "")


def make_data(folder: Path, seed: int = 0, img_dim: int = 48) -> None:
    """f30k_precomp-shaped data with a learnable signal: each image shows 3 concepts, each region one concept's
    vector plus noise, and its 5 captions name them. train 96 images, dev and test 40; 36 regions, 5 captions."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(CONTENT), img_dim))
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 96), ("dev", 40), ("test", 40)):
        concepts = [rng.choice(len(CONTENT), size=3, replace=False) for _ in range(n)]
        regions = np.stack([vectors[c[rng.integers(3, size=36)]] for c in concepts])
        images = regions + 0.8 * rng.standard_normal(regions.shape)
        np.save(folder / f"{split}_ims.npy", images.astype(np.float32))
        lines = [caption(rng, [CONTENT[i] for i in c]) for c in concepts for _ in range(5)]
        (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_vocab(path: Path, captions: list[str], tokenize) -> None:
    """A SCAN-format vocab json of the caption tokens, minus LEFT_OUT."""
    words = sorted({t for c in captions for t in tokenize(c.lower())} - LEFT_OUT)
    idx2word = ["<pad>", "<start>", "<end>", "<unk>", *words]
    path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(idx2word)},
                                "idx2word": {str(i): w for i, w in enumerate(idx2word)},
                                "idx": len(idx2word)}), encoding="utf-8")


def train_and_save(sgraf, module_name: str, data_root: Path, vocab_dir: Path, out: Path, steps: int,
                   seed: int) -> Path:
    """A few optimisation steps with SGRAF's own training step, then torch.save as its train.py does."""
    import torch

    torch.manual_seed(seed)
    opt = argparse.Namespace(
        data_path=str(data_root), data_name="f30k_precomp", vocab_path=str(vocab_dir), model_name=str(out),
        logger_name=str(out), batch_size=16, num_epochs=1, lr_update=30, learning_rate=2e-3, workers=0,
        log_step=10, val_step=1000, grad_clip=2.0, margin=0.2, max_violation=False, img_dim=48, word_dim=32,
        embed_size=64, sim_dim=32, num_layers=1, bi_gru=True, no_imgnorm=False, no_txtnorm=False,
        module_name=module_name, sgr_step=3)
    vocab = sgraf["vocab"].deserialize_vocab(str(vocab_dir / "f30k_precomp_vocab.json"))
    opt.vocab_size = len(vocab)
    train_loader, _ = sgraf["data"].get_loaders(opt.data_name, vocab, opt.batch_size, opt.workers, opt)
    model = sgraf["model"].SGRAF(opt)
    model.logger = sgraf["evaluation"].LogCollector()
    done = 0
    while done < steps:
        for batch in train_loader:
            model.train_start()
            model.train_emb(*batch)
            done += 1
            if done == steps:
                break
    path = out / "model_best.pth.tar"
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "model": model.state_dict(), "best_rsum": 0.0, "opt": opt, "Eiters": model.Eiters},
               str(path))
    return path


def upstream_metrics(sgraf, checkpoint: Path, data_root: Path) -> dict[str, float]:
    """Run SGRAF's evalrank on the test split and parse what it prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sgraf["evaluation"].evalrank(str(checkpoint), data_path=str(data_root), split="test", fold5=False)
    return parse_printed(printed.getvalue())


def parse_printed(text: str) -> dict[str, float]:
    metrics = {}
    for label, prefix in (("Image to text", "i2t"), ("Text to image", "t2i")):
        line = re.search(rf"^{label}: (.*)$", text, re.M).group(1)
        values = [float(v) for v in line.replace(",", " ").split()]
        metrics.update(zip((f"{prefix}_{k}" for k in ("r1", "r5", "r10", "medr", "meanr")), values))
    metrics["rsum"] = float(re.search(r"^rsum: (.*)$", text, re.M).group(1))
    return metrics


def upstream_scores(sgraf, path: Path) -> tuple[np.ndarray, tuple]:
    """SGRAF's test score matrix of one checkpoint (its encode_data + shard_attn_scores) and the encodings."""
    import torch

    ev = sgraf["evaluation"]
    checkpoint = torch.load(str(path), weights_only=False)
    opt = checkpoint["opt"]
    vocab = sgraf["vocab"].deserialize_vocab(str(Path(opt.vocab_path) / f"{opt.data_name}_vocab.json"))
    model = sgraf["model"].SGRAF(opt)
    model.load_state_dict(checkpoint["model"])
    loader = sgraf["data"].get_test_loader("test", opt.data_name, vocab, opt.batch_size, 0, opt)
    img_embs, cap_embs, cap_lens = ev.encode_data(model, loader)
    img_embs = np.array([img_embs[i] for i in range(0, len(img_embs), 5)])
    with contextlib.redirect_stdout(io.StringIO()):
        sims = ev.shard_attn_scores(model, img_embs, cap_embs, cap_lens, opt, shard_size=100)
    return sims, (img_embs, cap_embs, cap_lens)


def upstream_ensemble(sgraf, checkpoints: list[Path]) -> dict[str, float]:
    """SGRAF*: the mean of the two models' score matrices (SGRAF's README), ranked by its i2t/t2i."""
    ev = sgraf["evaluation"]
    (first, embs), (second, _) = (upstream_scores(sgraf, path) for path in checkpoints)
    mean = (first + second) / 2
    r, ri = ev.i2t(*embs, mean), ev.t2i(*embs, mean)
    keys = ("r1", "r5", "r10", "medr", "meanr")
    metrics = {**{f"i2t_{k}": v for k, v in zip(keys, r)}, **{f"t2i_{k}": v for k, v in zip(keys, ri)}}
    metrics["rsum"] = sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return metrics


def score_difference(sgraf, checkpoint: Path, run: Path, data: Path) -> tuple[float, int]:
    """(max |SGRAF's score - temde's score| over the test matrix, distinct scores in SGRAF's matrix)."""
    from temde.cli.evaluate import ensemble_scores
    from temde.data import load_split

    theirs, _ = upstream_scores(sgraf, checkpoint)
    ours = ensemble_scores([str(run / "best.pt")], load_split(data, "test"), "cpu")
    return float(np.abs(theirs - ours).max()), len(np.unique(theirs))


def temde_metrics(checkpoints: list[Path], vocab: Path, data: Path, work: Path, name: str) -> dict[str, float]:
    runs = []
    for path in checkpoints:
        run = work / f"temde-{path.parent.name}"
        subprocess.run([sys.executable, "-m", "temde", "import", "sgraf", "--checkpoint", str(path), "--vocab",
                        str(vocab), "--out", str(run), "--force"], check=True, stdout=subprocess.DEVNULL)
        runs += ["--checkpoint", str(run / "best.pt")]
    out = work / f"{name}.json"
    subprocess.run([sys.executable, "-m", "temde", "eval", *runs, "--data", str(data), "--split", "test",
                    "--json", str(out), "--device", "cpu"], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["metrics"]


def compare(name: str, theirs: dict[str, float], ours: dict[str, float]) -> bool:
    """Equal as SGRAF prints them (one decimal); medr and meanr too."""
    same = all(f"{theirs[k]:.1f}" == f"{ours[k]:.1f}" for k in theirs)
    print(f"{name}: {'identical' if same else 'DIFFERENT'}")
    for key in theirs:
        mark = "" if f"{theirs[key]:.1f}" == f"{ours[key]:.1f}" else "   <-- differs"
        print(f"  {key:10s} SGRAF {theirs[key]:7.1f}   temde {ours[key]:7.1f}{mark}")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sgraf", required=True, type=Path, help="a clone of Paranioar/SGRAF")
    parser.add_argument("--work", type=Path, default=Path("runs/sgraf-parity"), help="output folder")
    parser.add_argument("--steps", type=int, default=30, help="SGRAF training steps per model")
    args = parser.parse_args()

    import nltk
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not punkt_available():
        print("NLTK punkt data not installed: SGRAF's word_tokenize runs as NLTKWordTokenizer (as temde's does)")
        nltk.tokenize.word_tokenize = lambda text: nltk.tokenize.NLTKWordTokenizer().tokenize(text)
    sgraf = load_sgraf(args.sgraf)
    data_root = args.work / "data"
    data = data_root / "f30k_precomp"
    make_data(data)
    vocab_dir = args.work / "vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    vocab = vocab_dir / "f30k_precomp_vocab.json"
    captions = (data / "train_caps.txt").read_text(encoding="utf-8").splitlines()
    make_vocab(vocab, captions, nltk.tokenize.word_tokenize)

    ok = True
    checkpoints = []
    for seed, module in enumerate(("SAF", "SGR")):
        path = train_and_save(sgraf, module, data_root, vocab_dir, args.work / module, args.steps, seed)
        checkpoints.append(path)
        ok &= compare(module, upstream_metrics(sgraf, path, data_root),
                      temde_metrics([path], vocab, data, args.work, module))
        difference, distinct = score_difference(sgraf, path, args.work / f"temde-{module}", data)
        print(f"  scores: max |SGRAF - temde| = {difference:.1e} ({distinct} distinct of "
              f"{40 * 200} SGRAF scores; float32 rounding)")
    ok &= compare("SGRAF* (SAF + SGR)", upstream_ensemble(sgraf, checkpoints),
                  temde_metrics(checkpoints, vocab, data, args.work, "ensemble"))
    print("parity: " + ("every metric identical" if ok else "DIFFERENCES above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
