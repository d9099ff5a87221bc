"""`temde prepare`: caption table parsing, leakage-free splits, the shared dataset path, openclipart parsing.

Most tests use a stand-in extractor whose features encode a number painted into each image, so alignment and
grouping can be checked exactly; one round trip runs the real EfficientNet through the CLI.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from temde.cli import main
from temde.data.precomp import load_split, load_vocab
from temde.data.sources import openclipart as oc
from temde.data.sources import splits as S
from temde.data.sources.folder import (choose_captions_per_image, fit_captions, prepare_folder,
                                       read_caption_table)
from temde.data.sources.splits import assign_groups, grouped_split, leakage_groups, normalise_text
from temde.errors import DataError


# ---------------------------------------------------------------- helpers

class CodeExtractor:
    """Stand-in for FeatureExtractor: image i painted with red value c gets one-hot features at dimension c.
    Equal codes are exact duplicates (cosine 1), different codes are orthogonal (cosine 0)."""
    image_size = 224

    def __init__(self):
        self.images_computed = 0

    def extract(self, paths):
        out = np.zeros((len(paths), 49, 1280), dtype=np.float32)
        for i, path in enumerate(paths):
            code = read_code(path)
            out[i, :, code] = 1.0
            out[i, 0, 1279] = code  # a second copy of the code, readable from the stored rows
        self.images_computed += len(paths)
        return out


def read_code(path) -> int:
    with Image.open(path) as image:
        return int(image.convert("RGB").getpixel((0, 0))[0])


def paint(path: Path, code: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (code, 0, 0)).save(path)


def make_folder(tmp_path, n=12, captions_for=None, duplicates=()):
    """n images img00.png.. with codes 1..n (pairs in `duplicates` share a code); returns (dir, tsv, table)."""
    images = tmp_path / "images"
    codes = list(range(1, n + 1))
    for a, b in duplicates:
        codes[b] = codes[a]
    table = {}
    lines = []
    for i in range(n):
        name = f"img{i:02d}.png"
        paint(images / name, codes[i])
        captions = captions_for(i) if captions_for else [f"picture {words(i)} {w}" for w in ("one", "two")]
        table[name] = captions
        lines += [f"{name}\t{c}" for c in captions]
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return images, tsv, table, codes


def quiet(*args, **kwargs):
    pass


def words(i: int) -> str:
    """A distinct letters-only word per image (normalise_text drops digits, so numbers would all collide)."""
    return "".join(chr(ord("a") + int(d)) for d in f"{i:03d}")


# ---------------------------------------------------------------- caption table

def test_caption_table_groups_lines_by_image_in_first_mention_order(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("b.png\tfirst of b\na.png\tonly a\n\nb.png\t  second   of b \r\n", encoding="utf-8")
    table = read_caption_table(path)
    assert table.images == ["b.png", "a.png"]
    assert table.captions == [["first of b", "second of b"], ["only a"]]
    assert table.lines == [[1, 4], [2]]


@pytest.mark.parametrize("content, message", [
    ("a.png\tok\nb.png no tab here\n", r"line 2: expected 'image_file<TAB>caption', found no tab"),
    ("a.png\tok\n\nb.png\tx\ty\n", r"line 3: .*found 3 tab-separated fields"),
    ("a.png\tok\nb.png\t   \n", r"line 2: empty caption for 'b.png'"),
    ("\tcaption\n", r"line 1: empty image file name"),
    ("", r"no captions found"),
])
def test_malformed_caption_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "c.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"c\.tsv: {message}"):
        read_caption_table(path)


def test_non_utf8_caption_file_names_the_line(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_bytes(b"a.png\tok\nb.png\tcaf\xe9\n")
    with pytest.raises(DataError, match=r"c\.tsv: line 2 is not valid UTF-8"):
        read_caption_table(path)


def test_captions_per_image_rule():
    assert choose_captions_per_image([5, 5, 4, 5, 6]) == 5
    assert choose_captions_per_image([2, 3, 3, 2]) == 2  # tie -> the smaller count
    assert fit_captions(["a", "b"], 5) == ["a", "b", "a", "b", "a"]
    assert fit_captions(["a", "b", "c"], 2) == ["a", "b"]


# ---------------------------------------------------------------- splits

def test_normalise_text():
    assert normalise_text("  A red-ball, No. 2!\t") == "a red ball no"
    assert normalise_text("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)") == \
        normalise_text("Part of the flat icon collection (Wed Aug 25 23:31:12 2004)")
    assert normalise_text("café_au lait") == "café au lait"
    assert normalise_text("2004 !!") == ""


def _components(n, edges):
    """Reference connected components by breadth-first search: label = smallest member."""
    neighbours = [set() for _ in range(n)]
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    labels = [-1] * n
    for start in range(n):
        if labels[start] >= 0:
            continue
        stack, members = [start], []
        labels[start] = start
        while stack:
            node = stack.pop()
            members.append(node)
            for other in neighbours[node]:
                if labels[other] < 0:
                    labels[other] = start
                    stack.append(other)
    return np.array(labels)


def test_leakage_groups_match_a_brute_force_reference(monkeypatch):
    monkeypatch.setattr(S, "_BLOCK", 7)  # several blocks, including a ragged last one
    rng = np.random.default_rng(3)
    n, dim = 40, 64
    vectors = rng.normal(size=(n, dim))
    for a, b in [(0, 13), (13, 27), (5, 39), (20, 21)]:  # planted near-duplicates, one chain across blocks
        vectors[b] = vectors[a] + 0.05 * rng.normal(size=dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [[f"caption {words(i)}"] for i in range(n)]
    texts[3] = ["A dog, running!", "something else"]
    texts[30] = ["a dog running 2"]          # same normalised text as image 3
    texts[31] = ["12345"]                      # digits only: must not glue 31 and 32 together
    texts[32] = ["678"]
    cosine = vectors @ vectors.T
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if cosine[i, j] >= 0.95] + [(3, 30)]
    groups = leakage_groups(texts, vectors.astype(np.float32))
    np.testing.assert_array_equal(groups.labels, _components(n, edges))
    assert groups.merged_groups == 4  # {0,13,27}, {5,39}, {20,21} by features, {3,30} by text
    assert (groups.text_unions, groups.feature_unions) == (1, 4)


def test_leakage_groups_count_merges():
    vectors = np.eye(6, dtype=np.float32)
    vectors[4] = vectors[1]
    texts = [["x a"], ["y"], ["x a."], ["z"], ["w"], ["v"]]
    groups = leakage_groups(texts, vectors)
    assert groups.labels.tolist() == [0, 1, 0, 3, 1, 5]
    assert (groups.text_unions, groups.feature_unions) == (1, 1)
    assert (groups.n_groups, groups.merged_groups, groups.images_in_merged_groups) == (4, 2, 4)


def test_assign_groups_keeps_groups_whole_and_fills_exact_sizes():
    rng = np.random.default_rng(0)
    sizes = [1] * 60 + [2] * 10 + [3] * 5 + [40]
    labels = np.concatenate([np.full(s, g) for g, s in enumerate(sizes)])[rng.permutation(sum(sizes))]
    for seed in range(5):
        train, dev, test = assign_groups(labels, n_dev=10, n_test=15, seed=seed)
        assert (len(dev), len(test)) == (10, 15)
        assert sorted(np.concatenate([train, dev, test]).tolist()) == list(range(len(labels)))
        where = {}
        for name, part in (("train", train), ("dev", dev), ("test", test)):
            for image in part:
                assert where.setdefault(labels[image], name) == name  # a group never straddles
        assert all(labels[i] != 75 for i in np.concatenate([dev, test]))  # the 40-image group stays in train
    again = assign_groups(labels, 10, 15, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, dev, test)))
    assert not np.array_equal(assign_groups(labels, 10, 15, seed=5)[2], test)


def test_grouped_split_refuses_sizes_that_leave_no_training_data():
    with pytest.raises(ValueError, match="no training images"):
        grouped_split([["a"], ["b"], ["c"]], np.eye(3, dtype=np.float32), n_dev=1, n_test=2)


# ---------------------------------------------------------------- prepare folder

def test_prepare_folder_round_trip_keeps_captions_with_their_images(tmp_path):
    def captions_for(i):  # most images 2 captions; one has 3 (keeps 2), one has 1 (repeated)
        base = [f"image {words(i)} seen from the left", f"image {words(i)} seen from the right"]
        return base + ["a third one"] if i == 4 else base[:1] if i == 7 else base

    images, tsv, table, codes = make_folder(tmp_path, n=14, captions_for=captions_for)
    out = tmp_path / "out"
    manifest = prepare_folder(images, tsv, out, n_dev=3, n_test=4, seed=1, extractor=CodeExtractor(), log=quiet)
    assert manifest["captions_per_image"] == 2
    assert (manifest["images_with_more_captions"], manifest["images_with_fewer_captions"]) == (1, 1)
    seen = []
    for name, size in (("train", 7), ("dev", 3), ("test", 4)):
        split = load_split(out, name)
        names = manifest["splits"][name]["images"]
        assert split.images.shape == (size, 49, 1280) and split.captions_per_image == 2 and len(names) == size
        for row, image_name in enumerate(names):
            code = codes[int(image_name[3:5])]
            assert split.images[row, 0, 1279] == code and split.images[row, 5, code] == 1.0
            expected = fit_captions(table[image_name], 2)  # independent: straight from the TSV
            assert split.captions[2 * row:2 * row + 2] == expected
        seen += names
    assert sorted(seen) == sorted(table)
    vocab = load_vocab(out)
    train_words = {w for n in manifest["splits"]["train"]["images"] for c in table[n] for w in c.lower().split()}
    assert set(vocab.idx2word[4:]) == train_words  # vocabulary from train captions only
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["splits"] == manifest["splits"] and on_disk["source"] == "folder"


def test_same_seed_same_split_and_groups_never_straddle(tmp_path):
    # Images 2 and 9 share a normalised caption; images 5 and 11 are exact feature duplicates.
    def captions_for(i):
        if i in (2, 9):
            return [f"A red ball number {i}!"]
        return [f"thing {words(i)}"]

    images, tsv, _, _ = make_folder(tmp_path, n=16, captions_for=captions_for, duplicates=[(5, 11)])
    results = {}
    for seed in range(6):
        for run in (0, 1):
            out = tmp_path / f"out{seed}_{run}"
            manifest = prepare_folder(images, tsv, out, n_dev=3, n_test=3, seed=seed, extractor=CodeExtractor(),
                                      log=quiet)
            where = {n: s for s, part in manifest["splits"].items() for n in part["images"]}
            assert where["img02.png"] == where["img09.png"]
            assert where["img05.png"] == where["img11.png"]
            assert manifest["grouping"]["merged_groups"] == 2
            results[seed, run] = (manifest["splits"], (out / "train_caps.txt").read_text(),
                                  np.load(out / "test_ims.npy"))
        (s0, c0, i0), (s1, c1, i1) = results[seed, 0], results[seed, 1]
        assert s0 == s1 and c0 == c1 and np.array_equal(i0, i1)
    assert len({json.dumps(results[seed, 0][0]["test"]["images"]) for seed in range(6)}) > 1


def test_identical_pictures_at_the_top_of_a_one_caption_split_still_read_as_k_1(tmp_path):
    # Images 0, 1 and 2 are the same picture (one group, adjacent rows): the reader must not mistake the
    # k = 1 file for the "each image stored k times" layout.
    images, tsv, table, codes = make_folder(tmp_path, n=10, captions_for=lambda i: [f"thing {words(i)}"],
                                            duplicates=[(0, 1), (0, 2)])
    for seed in range(3):
        out = tmp_path / f"out{seed}"
        manifest = prepare_folder(images, tsv, out, n_dev=1, n_test=1, seed=seed, extractor=CodeExtractor(),
                                  log=quiet)
        for name, part in manifest["splits"].items():
            split = load_split(out, name)
            assert split.captions_per_image == 1 and split.n_images == part["n_images"]
            for row, image_name in enumerate(part["images"]):
                assert split.images[row, 0, 1279] == codes[int(image_name[3:5])]
                assert split.captions[row] == table[image_name][0]
        train = manifest["splits"]["train"]["images"]  # the 3-image group cannot fit a 1-image dev/test
        others = sorted(set(train) - {"img00.png", "img01.png", "img02.png"})
        assert train == ["img00.png", others[0], "img01.png", "img02.png", *others[1:]]


def test_zero_dev_images_writes_no_dev_split_and_removes_an_old_one(tmp_path):
    from temde.data.precomp import available_splits

    images, tsv, _, _ = make_folder(tmp_path, n=8)
    out = tmp_path / "out"
    prepare_folder(images, tsv, out, n_dev=2, n_test=2, seed=0, extractor=CodeExtractor(), log=quiet)
    assert available_splits(out) == ["train", "dev", "test"]
    manifest = prepare_folder(images, tsv, out, n_dev=0, n_test=2, seed=0, extractor=CodeExtractor(), force=True,
                              log=quiet)
    assert available_splits(out) == ["train", "test"] and set(manifest["splits"]) == {"train", "test"}
    assert manifest["splits"]["train"]["n_images"] == 6


def test_output_folder_policy_of_prepare(tmp_path, capsys):
    from temde.outputs import OutputFolderError

    images, tsv, _, _ = make_folder(tmp_path, n=8)
    out = tmp_path / "out"
    first = prepare_folder(images, tsv, out, n_dev=2, n_test=2, seed=0, extractor=CodeExtractor(), log=quiet)
    # The same request again rebuilds the same data set (features come from the cache in real use).
    messages = []
    again = prepare_folder(images, tsv, out, n_dev=2, n_test=2, seed=0, extractor=CodeExtractor(),
                           log=messages.append)
    assert again["splits"] == first["splits"] and "same settings" in messages[1]
    # Another request is refused, naming what differs and --force; nothing is touched.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(OutputFolderError, match=r"--seed 1 \(recorded: 0\).*--force"):
        prepare_folder(images, tsv, out, n_dev=2, n_test=2, seed=1, extractor=CodeExtractor(), log=quiet)
    tsv.write_text(tsv.read_text(encoding="utf-8").replace("picture", "photo"), encoding="utf-8")
    with pytest.raises(OutputFolderError, match="the content of --captions"):
        prepare_folder(images, tsv, out, n_dev=2, n_test=2, seed=0, extractor=CodeExtractor(), log=quiet)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    replaced = prepare_folder(images, tsv, out, n_dev=2, n_test=2, seed=0, extractor=CodeExtractor(), force=True,
                              log=quiet)
    assert load_split(out, "train").captions[0].startswith("photo")
    assert replaced["splits"]["train"]["n_images"] == 4
    # A folder holding anything else is never written into, --force or not: one line, exit 2 from the CLI.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine\n")
    assert main(["prepare", "folder", "--images", str(images), "--captions", str(tsv), "--out", str(other),
                 "--dev", "2", "--test", "2", "--force", "--no-feature-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"temde prepare: error: {other}: not empty, not a `temde prepare` output folder; choose a new " \
                  f"or empty --out"
    assert [p.name for p in other.iterdir()] == ["todo.txt"]


def test_a_data_set_prepared_before_records_existed(tmp_path):
    from temde.data.sources.folder import older_dataset
    from temde.outputs import RECORD_FILE, OutputFolderError

    images, tsv, _, _ = make_folder(tmp_path, n=8)
    out = tmp_path / "out"
    prepare_folder(images, tsv, out, n_dev=2, n_test=2, seed=0, extractor=CodeExtractor(), log=quiet)
    (out / RECORD_FILE).unlink()  # as an older temde left it
    with pytest.raises(OutputFolderError, match="not recorded.*--force"):
        prepare_folder(images, tsv, out, n_dev=2, n_test=2, seed=0, extractor=CodeExtractor(), log=quiet)
    # openclipart manifests tell their settings: the demo's cached data sets stay usable
    root = tmp_path / "openclipart"
    fake_openclipart(root)
    clip = tmp_path / "clip"
    oc.prepare_openclipart(clip, tmp_path / "cache", extractor=CodeExtractor(), root=root, limit=12, n_dev=2,
                           n_test=2, seed=0, max_title_repeats=5, log=quiet)
    recorded = json.loads((clip / RECORD_FILE).read_text())["settings"]
    (clip / RECORD_FILE).unlink()
    assert older_dataset(clip) == {**recorded, "root": str(root)}  # an explicit root is kept as given


def test_suggests_smaller_dev_and_test_for_a_small_folder(tmp_path):
    images, tsv, _, _ = make_folder(tmp_path, n=30)
    with pytest.raises(DataError, match=r"--dev 100 \+ --test 100 leaves no training images out of 30; with 30 "
                                        r"images try --dev 3 --test 3"):
        prepare_folder(images, tsv, tmp_path / "out", n_dev=100, n_test=100, seed=0, extractor=CodeExtractor(),
                       log=quiet)


def test_a_header_row_gets_a_hint(tmp_path):
    images, tsv, _, _ = make_folder(tmp_path, n=4)
    tsv.write_text("file\tcaption\n" + tsv.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: image 'file' not found in .*; if line 1 is a header row, delete it"):
        prepare_folder(images, tsv, tmp_path / "out", n_dev=1, n_test=1, seed=0, extractor=CodeExtractor(),
                       log=quiet)


def test_a_file_that_is_no_image_is_found_before_the_feature_pass(tmp_path):
    images, tsv, _, _ = make_folder(tmp_path, n=4)
    (images / "img02.png").write_bytes(b"definitely not a png")

    class NeverCalled(CodeExtractor):
        def extract(self, paths):
            raise AssertionError("the feature pass ran before the unreadable image was reported")

    with pytest.raises(DataError) as error:
        prepare_folder(images, tsv, tmp_path / "out", n_dev=1, n_test=1, seed=0, extractor=NeverCalled(),
                       log=quiet)
    message = str(error.value)
    assert message.endswith("line 5: image 'img02.png' is unreadable (not an image file PIL can read (unknown "
                            "format or damaged header))")
    assert "BytesIO" not in message


def test_missing_image_names_the_caption_line(tmp_path):
    images, tsv, _, _ = make_folder(tmp_path, n=5)
    (images / "img03.png").unlink()
    with pytest.raises(DataError, match=r"captions\.tsv: line 7: image 'img03\.png' not found"):
        prepare_folder(images, tsv, tmp_path / "out", n_dev=1, n_test=1, seed=0, extractor=CodeExtractor(),
                       log=quiet)


def test_unreadable_image_names_the_caption_line(tmp_path):
    from temde.features import FeatureExtractor

    images, tsv, _, _ = make_folder(tmp_path, n=4)
    (images / "img02.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match=r"captions\.tsv: line 5: image 'img02\.png' is unreadable"):
        prepare_folder(images, tsv, tmp_path / "out", n_dev=1, n_test=1, seed=0,
                       extractor=FeatureExtractor(progress=False), log=quiet)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cli_round_trip_with_the_real_network(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i in range(8):
        image = Image.new("RGB", (96, 96), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(i + 1):
            x, y = rng.integers(0, 80, 2)
            draw.ellipse((x, y, x + int(rng.integers(8, 40)), y + int(rng.integers(8, 40))),
                         fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        image.save(images / f"p{i}.png")
        lines.append(f"p{i}.png\t{i + 1} coloured {'balls' if i else 'ball'} {words(i)}")
    (tmp_path / "caps.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["prepare", "folder", "--images", str(images), "--captions", str(tmp_path / "caps.tsv"),
            "--out", str(out), "--dev", "1", "--test", "2", "--cache", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "merged groups" in printed and "k = 1 caption per image" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    from temde.features import FeatureExtractor
    direct = FeatureExtractor(cache_dir=None, progress=False)
    for name in ("train", "dev", "test"):
        split = load_split(out, name)
        names = manifest["splits"][name]["images"]
        assert split.images.shape == (len(names), 49, 1280)
        np.testing.assert_allclose(split.images, direct.extract([images / n for n in names]), rtol=1e-4, atol=1e-4)
        assert split.captions == [lines[int(n[1])].split("\t")[1] for n in names]
    assert len(list((tmp_path / "cache" / "features").rglob("*.npy"))) == 8

    # Errors reach the user as one line and a non-zero exit.
    (tmp_path / "caps.tsv").write_text("p0.png\tfine\np1.png without a tab\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "caps.tsv: line 2" in err and err.startswith("temde prepare: error:")


# ---------------------------------------------------------------- openclipart

SVG = textwrap.dedent("""\
    <?xml version="1.0" encoding="UTF-8"?>
    <svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
         xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <metadata>
        <rdf:RDF>
          <cc:Work rdf:about="">
            <dc:title>{title}</dc:title>
            <dc:description>{description}</dc:description>
            <dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
            <dc:creator><cc:Agent><dc:title>Jane Artist</dc:title></cc:Agent></dc:creator>
            <dc:publisher><cc:Agent rdf:about="http://www.openclipart.org"><dc:title>Openclipart</dc:title>
            </cc:Agent></dc:publisher>
          </cc:Work>
        </rdf:RDF>
      </metadata>
      <rect width="10" height="10"/>
    </svg>
    """)


def svg(title="", description="", keywords=()):
    return SVG.format(title=title, description=description,
                      keywords="".join(f"<rdf:li>{k}</rdf:li>" for k in keywords))


def test_parse_svg_metadata_reads_the_work_not_the_agents():
    meta = oc.parse_svg_metadata(svg("Red  Apple", "A shiny\n red apple.", ["food", "fruit, apple", ""]))
    assert meta == oc.SvgMetadata("Red Apple", "A shiny red apple.", ("food", "fruit", "apple"), "Jane Artist")
    assert oc.parse_svg_metadata(svg("T").encode()).title == "T"
    assert oc.parse_svg_metadata("<svg><rect/></svg>") == oc.SvgMetadata()
    broken = svg("T").replace("</dc:title>", "", 1)
    assert oc.parse_svg_metadata(broken) == oc.SvgMetadata()


def test_parse_svg_metadata_with_prefixes_declared_outside_the_rdf_block():
    text = ('<svg xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:dc="http://purl.org/dc/elements/1.1/"'
            ' xmlns:cc="http://creativecommons.org/ns#"><metadata><rdf:RDF><cc:Work><dc:title>Owl</dc:title>'
            '<dc:subject><rdf:Bag><rdf:li>bird</rdf:li></rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata></svg>')
    assert oc.parse_svg_metadata(text) == oc.SvgMetadata("Owl", "", ("bird",), "")


def _item(name, **fields):
    return oc.ClipArt(name, Path(name), Path(name), oc.SvgMetadata(creator="Jane Artist", **fields))


def test_make_captions_drops_boilerplate_and_junk():
    items = [_item(f"png/s{i}.png", title=f"Icon Collection ({i})", keywords=("icon",)) for i in range(4)]
    items += [
        _item("png/apple.png", title="Apple", description="apple", keywords=("food", "hash", "Apple", "jane artist")),
        _item("png/owl.png", title="Clipart by Jane Artist - owl", description="Night bird. mail me: jane@x.org",
              keywords=("bird", "unsorted", "HASH(0x8660044)", "night_bird")),
        _item("png/none.png", title="  ", keywords=("tag",)),
    ]
    kept, stats = oc.make_captions(items, max_title_repeats=3)
    assert stats == {"without_title": 1, "boilerplate_title": 4, "kept": 2}
    captions = {item.name: (caption, texts) for item, caption, texts in kept}
    assert captions["png/apple.png"] == ("Apple. food", ["Apple"])
    assert captions["png/owl.png"] == ("owl. Night bird. mail me:", ["owl", "Night bird. mail me:"])
    kept4, _ = oc.make_captions(items, max_title_repeats=4)  # now 4 repeats are allowed
    assert len(kept4) == 6


def test_long_captions_keep_their_first_words_and_cut_keywords_first():
    description = " ".join(f"d{i}" for i in range(20))  # 20 words: the description cap keeps 12
    item = _item("png/long.png", title="Big red barn", description=description,
                 keywords=("farm", "building", "rural", "wood"))
    (kept_item, caption, _), = oc.make_captions([item])[0]
    expected = ["Big", "red", "barn."] + [f"d{i}" for i in range(11)] + ["d11.", "farm,", "building,", "rural"]
    assert caption.split() == expected[:oc.MAX_CAPTION_WORDS] and len(caption.split()) == 18


def test_deterministic_subset_is_stable_and_keeps_order():
    kept = [(_item(f"png/{i}.png", title="t"), "c", ["t"]) for i in range(50)]
    subset = oc.deterministic_subset(kept, 10)
    assert subset == oc.deterministic_subset(list(kept), 10) and len(subset) == 10
    names = [item.name for item, _, _ in subset]
    assert names == sorted(names, key=lambda n: int(n[4:-4])) and names != [f"png/{i}.png" for i in range(10)]


def fake_openclipart(root: Path, n: int = 30) -> None:
    """A miniature openclipart tree: svg/cat/x.svg + png/cat/x.png, one symlinked duplicate, one boilerplate set."""
    for i in range(n):
        rel = f"cat{i % 3}/item{i:02d}"
        title = "Boilerplate Theme" if i >= n - 6 else f"Thing {words(i)}"
        (root / "svg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "svg" / f"{rel}.svg").write_text(svg(title, "", ["tag", f"kw{words(i)}"]), encoding="utf-8")
        paint(root / "png" / f"{rel}.png", i + 1)
    os.symlink(root / "svg" / "cat0" / "item00.svg", root / "svg" / "cat1" / "copy_of_item00.svg")
    paint(root / "png" / "cat1" / "copy_of_item00.png", 1)


def test_prepare_openclipart_from_a_local_tree(tmp_path):
    root = tmp_path / "openclipart"
    fake_openclipart(root)
    out = tmp_path / "out"
    manifest = oc.prepare_openclipart(out, tmp_path / "cache", extractor=CodeExtractor(), root=root, n_dev=3,
                                      n_test=3, seed=0, max_title_repeats=5, log=quiet)
    info = manifest["openclipart"]
    assert (info["svg_files"], info["boilerplate_title"], info["kept"]) == (30, 6, 24)
    assert manifest["captions_per_image"] == 1
    for name in ("train", "dev", "test"):
        split = load_split(out, name)
        for row, image_name in enumerate(manifest["splits"][name]["images"]):
            i = int(image_name[-6:-4])
            assert image_name == f"png/cat{i % 3}/item{i:02d}.png"
            assert (Path(manifest["images_root"]) / image_name).is_file()
            assert split.images[row, 0, 1279] == i + 1
            assert split.captions[row] == f"Thing {words(i)}. tag, kw{words(i)}"
    limited = oc.prepare_openclipart(tmp_path / "small", tmp_path / "cache", extractor=CodeExtractor(), root=root,
                                     limit=10, n_dev=1, n_test=1, seed=0, max_title_repeats=5, log=quiet)
    assert sum(s["n_images"] for s in limited["splits"].values()) == 10


def test_download_needs_apt_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(oc, "SYSTEM_ROOT", tmp_path / "nowhere")
    monkeypatch.setattr(oc.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get/dpkg-deb not found.*openclipart-svg"):
        oc.ensure_openclipart(tmp_path / "cache", log=quiet)


def test_failed_apt_download_is_a_clear_error(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(oc, "SYSTEM_ROOT", tmp_path / "nowhere")
    monkeypatch.setattr(oc.shutil, "which", lambda name: f"/usr/bin/{name}")
    calls = []

    def fake_run(command, cwd=None):
        calls.append(command)
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package openclipart-svg")

    monkeypatch.setattr(oc, "_run", fake_run)
    monkeypatch.setattr(oc.os, "geteuid", lambda: 0)
    with pytest.raises(DataError, match=r"apt-get download .* failed \(E: Unable to locate package.*apt-get update"):
        oc.ensure_openclipart(tmp_path / "cache", log=quiet)
    assert calls == [["apt-get", "download", *oc.PACKAGES], ["apt-get", "update"],
                     ["apt-get", "download", *oc.PACKAGES]]  # root: one update, one retry
    calls.clear()
    monkeypatch.setattr(oc.os, "geteuid", lambda: 1000)
    with pytest.raises(DataError):
        oc.ensure_openclipart(tmp_path / "cache", log=quiet)
    assert calls == [["apt-get", "download", *oc.PACKAGES]]  # not root: no update attempted


@pytest.mark.slow
def test_real_openclipart_quick_subset(tmp_path):
    """Downloads the Debian packages (or uses the cache / system install) and runs the real network on 120 images."""
    out = tmp_path / "out"
    assert main(["prepare", "openclipart", "--out", str(out), "--limit", "120", "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["openclipart"]["kept"] > 2500
    sizes = {name: s["n_images"] for name, s in manifest["splits"].items()}
    assert sum(sizes.values()) == 120 and sizes["test"] == 12 and sizes["dev"] == 12
    for name in sizes:
        split = load_split(out, name)
        assert split.images.shape == (sizes[name], 49, 1280) and split.captions_per_image == 1
