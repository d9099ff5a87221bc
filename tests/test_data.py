"""Data layer: precomp files, validation, vocabulary, tokenizer, batches. Expectations are written by hand."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from temde.data import (PAD, Batch, CaptionDataset, PrecompSplit, Vocabulary, available_splits,
                        build_and_save_vocab, collate, encode_captions, load_split, load_vocab, make_loader,
                        tokenize, write_split)
from temde.data import precomp
from temde.errors import DataError


def features(n: int, regions: int = 3, dim: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, regions, dim)).astype(np.float32)


def captions_for(n_images: int, k: int) -> list[str]:
    return [f"image {i} caption {j}" for i in range(n_images) for j in range(k)]


def write_raw(folder, split, images, caption_text: bytes | str):
    """Write the two files directly, bypassing write_split (to build broken inputs)."""
    np.save(folder / f"{split}_ims.npy", images)
    data = caption_text.encode("utf-8") if isinstance(caption_text, str) else caption_text
    (folder / f"{split}_caps.txt").write_bytes(data)


def raises_data_error(match_file, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_split(*args, **kwargs)
    message = str(info.value)
    assert str(match_file) in message and "\n" not in message, message
    return message


# ---------------------------------------------------------------- precomp round trip and k

@pytest.mark.parametrize("k", [1, 5])
def test_round_trip_and_k_inference(tmp_path, k):
    images = features(6)
    captions = captions_for(6, k)
    captions[1 % len(captions)] = "Ünïcode café — naïve"  # read back as text, not bytes
    write_split(tmp_path, "test", images, captions)
    split = load_split(tmp_path, "test")
    assert split.captions_per_image == k
    assert (split.n_images, split.n_captions) == (6, 6 * k)
    assert isinstance(split.images, np.memmap) and split.images.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(split.images), images)
    assert split.captions == captions
    assert split.image_ids().tolist() == [j // k for j in range(6 * k)]
    # the text file is one caption per line, k lines per image
    lines = (tmp_path / "test_caps.txt").read_text(encoding="utf-8").splitlines()
    assert lines == captions
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


def test_write_split_normalises_whitespace_and_rejects_bad_args(tmp_path):
    write_split(tmp_path, "dev", features(1), ["a  dog\nruns \t fast", "two"])
    assert load_split(tmp_path, "dev").captions == ["a dog runs fast", "two"]
    with pytest.raises(ValueError):
        write_split(tmp_path, "x", features(2), ["only one"])
    with pytest.raises(ValueError):
        write_split(tmp_path, "x", features(1), ["  "])
    with pytest.raises(ValueError):
        write_split(tmp_path, "x", features(2)[0], ["a", "b"])
    bad = features(3)
    bad[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"images\[2\]"):
        write_split(tmp_path, "x", bad, ["a", "b", "c"])
    assert not (tmp_path / "x_ims.npy").exists()


def test_write_split_is_atomic(tmp_path, monkeypatch):
    write_split(tmp_path, "train", features(2), ["a", "b"])
    before = (tmp_path / "train_ims.npy").read_bytes()

    def half_save(f, array, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(precomp.np, "save", half_save)
    with pytest.raises(OSError):
        write_split(tmp_path, "train", features(2, seed=1), ["c", "d"])
    assert (tmp_path / "train_ims.npy").read_bytes() == before
    assert load_split(tmp_path, "train").captions == ["a", "b"]
    assert sorted(os.listdir(tmp_path)) == ["train_caps.txt", "train_ims.npy"]


def test_repeated_image_layout_is_detected(tmp_path, monkeypatch):
    images = features(4)
    repeated = np.repeat(images, 5, axis=0)  # rows 0-4 = image 0, rows 5-9 = image 1, ...
    captions = captions_for(4, 5)
    write_split(tmp_path, "test", repeated, captions)
    monkeypatch.setattr(precomp, "_CHUNK_BYTES", 2 * 5 * images[0].nbytes)  # several chunks of whole groups
    for validate in (True, False):
        split = load_split(tmp_path, "test", validate=validate)
        assert split.images_repeated and split.captions_per_image == 5
        assert split.n_images == 4 and split.n_captions == 20
        np.testing.assert_array_equal(np.asarray(split.images), images)
        assert split.image_ids().tolist() == [j // 5 for j in range(20)]


def test_repeated_layout_with_a_broken_group_is_refused(tmp_path):
    repeated = np.repeat(features(4), 5, axis=0)
    repeated[12, 1, 2] += 1.0  # group 2 (rows 10-14) no longer repeats one image
    write_split(tmp_path, "test", repeated, captions_for(4, 5))
    message = raises_data_error(tmp_path / "test_ims.npy", tmp_path, "test")
    assert "10..14" in message


def test_distinct_rows_one_caption_each_is_k1_and_k_can_be_forced(tmp_path):
    write_split(tmp_path, "test", features(6), captions_for(6, 1))
    split = load_split(tmp_path, "test")
    assert split.captions_per_image == 1 and not split.images_repeated
    # identical first rows would be read as a repetition; captions_per_image=1 says otherwise
    images = features(6)
    images[1] = images[0]
    write_split(tmp_path, "dup", images, captions_for(6, 1))
    with pytest.raises(DataError, match=r"rows 2\.\.3 are not identical"):
        load_split(tmp_path, "dup")  # rows 0-1 look like a repeat of 2, but rows 2-3 are not
    forced = load_split(tmp_path, "dup", captions_per_image=1)
    assert forced.n_images == 6 and forced.captions_per_image == 1
    write_split(tmp_path, "test", features(6), captions_for(6, 2))
    with pytest.raises(DataError, match="not the 3 asked for"):
        load_split(tmp_path, "test", captions_per_image=3)


def test_available_splits_and_from_arrays(tmp_path):
    for name in ("zeta", "test", "train"):
        write_split(tmp_path, name, features(1), ["a"])
    (tmp_path / "dev_ims.npy").write_bytes(b"")  # no caption file: not a split
    assert available_splits(tmp_path) == ["train", "test", "zeta"]
    split = PrecompSplit.from_arrays(features(2), captions_for(2, 3))
    assert (split.n_images, split.captions_per_image, split.data_dir) == (2, 3, None)


# ---------------------------------------------------------------- bad input

def test_missing_files(tmp_path):
    raises_data_error(tmp_path / "test_ims.npy", tmp_path, "test")
    np.save(tmp_path / "test_ims.npy", features(2))
    raises_data_error(tmp_path / "test_caps.txt", tmp_path, "test")


def test_truncated_and_padded_npy(tmp_path):
    write_split(tmp_path, "test", features(3), captions_for(3, 2))
    path = tmp_path / "test_ims.npy"
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # data cut short
    raises_data_error(path, tmp_path, "test")
    path.write_bytes(whole[:40])  # header cut short
    raises_data_error(path, tmp_path, "test")
    path.write_bytes(whole + b"\0" * 16)  # trailing garbage: size disagrees with the header
    raises_data_error(path, tmp_path, "test")
    path.write_bytes(b"not an npy file at all")
    raises_data_error(path, tmp_path, "test")


def test_wrong_dtype_and_ndim(tmp_path):
    write_raw(tmp_path, "test", features(2).astype(np.float64), "a\nb\n")
    assert "float32" in raises_data_error(tmp_path / "test_ims.npy", tmp_path, "test")
    write_raw(tmp_path, "test", features(2)[:, 0], "a\nb\n")
    assert "shape" in raises_data_error(tmp_path / "test_ims.npy", tmp_path, "test")
    np.save(tmp_path / "test_ims.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    raises_data_error(tmp_path / "test_ims.npy", tmp_path, "test")


def test_caption_count_not_a_multiple(tmp_path):
    write_raw(tmp_path, "test", features(3), "\n".join(captions_for(3, 2)[:-1]) + "\n")
    message = raises_data_error(tmp_path / "test_caps.txt", tmp_path, "test")
    assert "5 captions" in message and "3 images" in message


def test_invalid_utf8_names_the_line(tmp_path):
    write_raw(tmp_path, "test", features(2), b"first\nsecond\nbad \xff\xfe byte\nfourth\n")
    assert "line 3" in raises_data_error(tmp_path / "test_caps.txt", tmp_path, "test")


def test_empty_caption_line_names_the_line(tmp_path):
    write_raw(tmp_path, "test", features(2), "first\n  \nthird\nfourth\n")
    assert "line 2" in raises_data_error(tmp_path / "test_caps.txt", tmp_path, "test")


def test_crlf_and_bom_are_tolerated(tmp_path):
    write_raw(tmp_path, "test", features(2), "\ufefffirst\r\nsecond\r\n")
    assert load_split(tmp_path, "test").captions == ["first", "second"]


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_features_name_the_image(tmp_path, monkeypatch, bad_value):
    images = features(20)
    images[13, 2, 1] = bad_value
    write_raw(tmp_path, "test", images, "\n".join(captions_for(20, 1)) + "\n")
    monkeypatch.setattr(precomp, "_CHUNK_BYTES", 3 * images[0].nbytes)  # 3 images per chunk: 13 is in chunk 4
    assert "image 13" in raises_data_error(tmp_path / "test_ims.npy", tmp_path, "test")
    assert load_split(tmp_path, "test", validate=False).n_images == 20  # cheap mode skips the scan


def test_empty_split(tmp_path):
    write_raw(tmp_path, "test", np.zeros((0, 3, 4), np.float32), "")
    assert "empty" in raises_data_error(tmp_path / "test_ims.npy", tmp_path, "test")
    write_raw(tmp_path, "test", features(2), "")
    assert "empty" in raises_data_error(tmp_path / "test_caps.txt", tmp_path, "test")


# ---------------------------------------------------------------- tokenizer and vocabulary

def test_words_tokenizer_examples():
    # The regex tokenizer (the previous default; the NLTK one is tested in test_tokenizer.py).
    assert tokenize("A dog, running!", "words") == ["a", "dog", "running"]
    assert tokenize("Two men's bikes; a T-shirt.", "words") == ["two", "men's", "bikes", "a", "t", "shirt"]
    assert tokenize("The man’s hat: 3 red CAFÉS", "words") == ["the", "man's", "hat", "3", "red", "cafés"]
    assert tokenize("  ...  ", "words") == []
    assert tokenize("snake_case 'quoted'", "words") == ["snake", "case", "quoted"]


def test_vocab_build_encode_decode():
    vocab = Vocabulary.build(["a dog", "A cat.", "a dog runs", "zebra"], min_count=1, tokenizer="words")
    # counts: a=3, dog=2, cat=1, runs=1, zebra=1 -> by count, ties alphabetical
    assert vocab.idx2word == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "cat", "runs", "zebra"]
    assert len(vocab) == 9 and vocab.tokenizer == "words"
    assert vocab.encode("A dog eats.") == [1, 4, 5, 3, 2]
    assert vocab.encode(["cat"]) == [1, 6, 2]
    assert vocab.decode([1, 4, 5, 3, 2, 0, 0]) == "a dog <unk>"
    assert Vocabulary.build(["a dog", "A cat.", "a dog runs"], min_count=2, tokenizer="words").idx2word[4:] \
        == ["a", "dog"]


def test_vocab_field_format_round_trip(tmp_path):
    vocab = Vocabulary(["dog", "cat"])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw == {"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 4, "cat": 5},
                   "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>", "4": "dog", "5": "cat"},
                   "idx": 6, "tokenizer": "nltk"}
    assert Vocabulary.load(path) == vocab
    assert load_vocab(tmp_path) == vocab and load_vocab(path) == vocab
    # a SCAN-style file written by someone else, keys in any order
    other = tmp_path / "f30k_precomp_vocab.json"
    other.write_text(json.dumps({"idx": 5, "idx2word": {"4": "man", "0": "<pad>", "1": "<start>", "2": "<end>",
                                                           "3": "<unk>"},
                                 "word2idx": {"man": 4, "<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}}))
    assert Vocabulary.load(other).idx2word == ["<pad>", "<start>", "<end>", "<unk>", "man"]


def test_bad_vocab_files(tmp_path):
    path = tmp_path / "vocab.json"
    cases = [
        None,  # missing
        "{not json",
        json.dumps({"word2idx": {}}),
        json.dumps({"word2idx": {"<pad>": 0, "<unk>": 1}, "idx2word": {"0": "<pad>", "1": "<unk>"}, "idx": 2}),
        json.dumps({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "a": 5},
                    "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>", "4": "a"}, "idx": 5}),
        json.dumps({"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3},
                    "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>"}, "idx": 9}),
    ]
    for text in cases:
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
        with pytest.raises(DataError, match="vocab.json"):
            Vocabulary.load(path)


def test_build_and_save_vocab_uses_train_only(tmp_path):
    write_split(tmp_path, "train", features(1), ["a dog", "a cat"])
    write_split(tmp_path, "test", features(1), ["secret words", "only in test"])
    vocab = build_and_save_vocab(tmp_path)
    assert vocab.idx2word[4:] == ["a", "cat", "dog"]
    assert load_vocab(tmp_path) == vocab


# ---------------------------------------------------------------- batches

def test_collate_pads_and_masks():
    image_a = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    image_b = np.full((1, 2), 7.0, dtype=np.float32)  # fewer regions: padded and masked
    batch = collate([(image_a, [1, 5, 6, 2], 4, 9), (image_b, [1, 2], 0, 1)])
    assert isinstance(batch, Batch) and len(batch) == 2
    expected_images = torch.tensor([[[0., 1.], [2., 3.], [4., 5.]],
                                    [[7., 7.], [0., 0.], [0., 0.]]])
    assert torch.equal(batch.images, expected_images)
    assert batch.images.dtype == torch.float32
    assert batch.image_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.tokens.tolist() == [[1, 5, 6, 2], [1, 2, PAD, PAD]]
    assert batch.token_mask.tolist() == [[True, True, True, True], [True, True, False, False]]
    assert batch.lengths.tolist() == [4, 2] and batch.lengths.dtype == torch.long
    assert batch.image_ids.tolist() == [4, 0] and batch.caption_ids.tolist() == [9, 1]
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tokens, batch.tokens)


def test_collate_equal_regions_all_true_mask():
    images = features(3, regions=5, dim=2)
    batch = collate([(images[i], [1, 2], i, i) for i in range(3)])
    assert torch.equal(batch.images, torch.from_numpy(images))
    assert bool(batch.image_mask.all()) and batch.image_mask.shape == (3, 5)


def test_encode_captions():
    vocab = Vocabulary(["a", "dog", "cat"])
    tokens, lengths = encode_captions(["a dog", "cat", "a big dog runs"], vocab)
    assert tokens.tolist() == [[1, 4, 5, 2, 0, 0], [1, 6, 2, 0, 0, 0], [1, 4, 3, 5, 3, 2]]
    assert lengths.tolist() == [4, 3, 6]
    assert tokens.dtype == torch.long and lengths.dtype == torch.long


def test_dataset_items_pair_captions_with_images(tmp_path):
    images = features(3)
    write_split(tmp_path, "train", images, captions_for(3, 2))
    split = load_split(tmp_path, "train")
    vocab = Vocabulary.build(split.captions)
    dataset = CaptionDataset(split, vocab)
    assert len(dataset) == 6
    image, ids, image_id, caption_id = dataset[5]
    assert (image_id, caption_id) == (2, 5)
    np.testing.assert_array_equal(image, images[2])
    assert vocab.decode(ids) == "image 2 caption 1"
    # pickled for worker processes without the array, reopened from the file on first use
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[3][0], images[1])
    np.testing.assert_array_equal(np.asarray(clone.split.images), images)


def test_dataset_pickle_does_not_carry_features(tmp_path):
    big = features(64, regions=8, dim=64)  # 128 KB of features
    write_split(tmp_path, "train", big, captions_for(64, 1))
    dataset = CaptionDataset(load_split(tmp_path, "train"), Vocabulary())
    assert len(pickle.dumps(dataset)) < big.nbytes // 4


def loader_order(split, vocab, seed, **kwargs) -> list[list[int]]:
    loader = make_loader(split, vocab, batch_size=4, shuffle=True, seed=seed, **kwargs)
    return [[batch.caption_ids.tolist() for batch in loader] for _epoch in range(2)]


def test_loader_is_deterministic_under_a_seed(tmp_path):
    write_split(tmp_path, "train", features(10), captions_for(10, 2))
    split = load_split(tmp_path, "train")
    vocab = Vocabulary.build(split.captions)
    first = loader_order(split, vocab, seed=3)
    assert first == loader_order(split, vocab, seed=3)
    assert first != loader_order(split, vocab, seed=4)
    assert first[0] != first[1]  # a new order each epoch
    for epoch in first:
        assert sorted(sum(epoch, [])) == list(range(20))  # every caption once
    # worker processes give the same batches
    assert loader_order(split, vocab, seed=3, num_workers=2) == first
    plain = make_loader(split, vocab, batch_size=8, shuffle=False, seed=0, drop_last=True)
    assert [b.caption_ids.tolist() for b in plain] == [list(range(8)), list(range(8, 16))]
    batch = next(iter(plain))
    assert torch.equal(batch.image_ids, batch.caption_ids // 2)


def test_loader_with_a_sampler(tmp_path):
    write_split(tmp_path, "train", features(4), captions_for(4, 2))
    split = load_split(tmp_path, "train")
    sampler = torch.utils.data.distributed.DistributedSampler(range(8), num_replicas=2, rank=1, shuffle=False)
    loader = make_loader(split, Vocabulary(), batch_size=8, shuffle=True, seed=0, sampler=sampler)
    assert [b.caption_ids.tolist() for b in loader] == [[1, 3, 5, 7]]


# ---- caption -> image index: 1..n captions per image ----------------------------------------------------------

def test_caption_index_round_trip_and_batches(tmp_path):
    from temde.data import load_split, make_loader, write_split
    from temde.data.precomp import caption_index_file
    from temde.data.vocab import Vocabulary

    images = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    captions = ["a cat", "a small cat", "a dog", "a red car", "a car", "one more car"]
    owner = np.array([0, 0, 1, 2, 2, 2])
    write_split(tmp_path, "test", images, captions, caption_images=owner)
    split = load_split(tmp_path, "test")
    assert split.captions_per_image == 0 and split.image_ids().tolist() == owner.tolist()
    assert split.layout is split.caption_images and split.captions_of(2) == [3, 4, 5]
    batch = next(iter(make_loader(split, Vocabulary.build(captions), 6, shuffle=False)))
    assert batch.image_ids.tolist() == owner.tolist()
    assert np.array_equal(batch.images.numpy(), images[owner])  # each caption with its own image's regions
    # Rewriting the split in the fixed layout drops the index, so it cannot re-assign the new captions.
    write_split(tmp_path, "test", images, captions)
    assert not caption_index_file(tmp_path, "test").exists()
    assert load_split(tmp_path, "test").captions_per_image == 2


@pytest.mark.parametrize("index, message", [
    (np.array([0, 0, 1, 3]), "caption 3 points to image 3, outside the 3 images"),
    (np.array([0, 0, 1, 1]), "image 2 has no caption"),
    (np.array([0, 1, 2]), "3 entries for 4 captions"),
    (np.array([0.0, 1.0, 2.0, 2.0]), "integer array"),
])
def test_bad_caption_index_is_one_line_naming_the_file(tmp_path, index, message):
    from temde.data import load_split, write_split
    from temde.data.precomp import caption_index_file
    from temde.errors import DataError

    write_split(tmp_path, "dev", np.zeros((3, 2, 4), dtype=np.float32), ["a", "b", "c", "d"],
                caption_images=np.array([0, 1, 2, 2]))
    np.save(caption_index_file(tmp_path, "dev"), index)
    with pytest.raises(DataError, match=message) as error:
        load_split(tmp_path, "dev")
    assert str(caption_index_file(tmp_path, "dev")) in str(error.value)
    with pytest.raises(ValueError, match=message):
        write_split(tmp_path / "w", "dev", np.zeros((3, 2, 4), dtype=np.float32), ["a", "b", "c", "d"],
                    caption_images=index)
