"""Tokenizers and the vocabulary's tokenizer. References: NLTK called directly, and ids/tokens written by hand."""
from __future__ import annotations

import json

import nltk
import pytest
from nltk.tokenize import NLTKWordTokenizer

from temde.data import Vocabulary, encode_captions, load_vocab, tokenize
from temde.data import tokenizer as tokenizer_module
from temde.errors import CheckpointError, DataError
from temde.training.checkpoint import load_checkpoint, restore_vocab, save_checkpoint

CAPTIONS = [
    "A man's dog.",
    "Two dogs' toys lie on the grass.",
    "He can't reach the white-walled shelf, so he stands on a chair.",
    'A sign reads "STOP" in red.',
    "The girl\u2019s café has 2 tables",
    "A waiter serves coffee at a café.",
    "A man, a woman, and a child walk down the street.",
    "Three people (two men and a woman) sit on a bench.",
    "A boy wearing a T-shirt is running!",
    "Is that a cat on the roof?",
    "A 10-year-old boy rides his bike; his sister follows.",
    "The children's choir sings at 5:30 pm.",
    "  A group of people stand outside a building .  ",
    "It's a sunny day at the beach...",
    "A man wearing a 'Hello' shirt.",
    "Two dogs, one black and one brown, play in the snow.",
    "A player in the No. 23 jersey dribbles the ball.",
    "A woman's red umbrella and her friends' bags",
    "They're sitting at a table with 4 cups of tea",
    "A dog jumps over a fence",
]


@pytest.fixture
def no_punkt(monkeypatch):
    """The state this project ships in: NLTK's punkt model is not installed (whatever this machine has)."""
    monkeypatch.setattr(tokenizer_module, "punkt_installed", lambda: False)


def test_nltk_tokens_equal_nltks_word_tokenizer(no_punkt):
    reference = NLTKWordTokenizer()
    for caption in CAPTIONS:
        assert tokenize(caption) == reference.tokenize(caption.lower()), caption
        assert tokenize(caption, "nltk") == reference.tokenize(caption.lower()), caption


def test_nltk_tokens_by_hand(no_punkt):
    assert tokenize("A man's dog.") == ["a", "man", "'s", "dog", "."]
    assert tokenize("Two dogs' toys lie on the grass.") == ["two", "dogs", "'", "toys", "lie", "on", "the", "grass",
                                                              "."]
    assert tokenize("He can't reach the white-walled shelf, so he stands on a chair.") == [
        "he", "ca", "n't", "reach", "the", "white-walled", "shelf", ",", "so", "he", "stands", "on", "a", "chair", "."]
    assert tokenize('A sign reads "STOP" in red.') == ["a", "sign", "reads", "``", "stop", "''", "in", "red", "."]
    # NLTK treats only the ASCII apostrophe as a clitic's: the typographic one is a token of its own, as upstream.
    assert tokenize("The girl\u2019s café has 2 tables") == ["the", "girl", "\u2019", "s", "café", "has", "2",
                                                              "tables"]
    assert tokenize("   ") == []


def test_two_sentences_without_punkt_keep_the_inner_period(no_punkt):
    # Only the line's last period is split off by the word tokenizer alone: the documented difference to upstream.
    assert tokenize("A dog runs. A cat sleeps.") == ["a", "dog", "runs.", "a", "cat", "sleeps", "."]


def _fake_punkt(root) -> None:
    # An empty punkt_tab model (no abbreviations, no collocations): enough for NLTK to split at "runs. ".
    model = root / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (model / name).write_text("")


@pytest.fixture
def punkt_path(tmp_path, monkeypatch):
    """nltk.data.path holding only `tmp_path`; the cached punkt answers are cleared before and after."""
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    caches = (tokenizer_module.punkt_installed, nltk.tokenize._get_punkt_tokenizer)
    for cache in caches:
        cache.cache_clear()
    yield tmp_path
    for cache in caches:
        cache.cache_clear()


def test_punkt_is_looked_up_not_downloaded(punkt_path):
    assert tokenizer_module.punkt_installed() is False
    tokenizer_module.punkt_installed.cache_clear()
    _fake_punkt(punkt_path)
    assert tokenizer_module.punkt_installed() is True


def test_with_punkt_installed_tokens_are_word_tokenize(punkt_path):
    _fake_punkt(punkt_path)
    caption = "A dog runs. A cat sleeps."
    assert tokenize(caption) == nltk.word_tokenize(caption.lower())
    assert tokenize(caption) == ["a", "dog", "runs", ".", "a", "cat", "sleeps", "."]


def test_unknown_tokenizer_name():
    with pytest.raises(ValueError, match="unknown tokenizer 'spacy'"):
        tokenize("a dog", "spacy")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        Vocabulary(["dog"], tokenizer="spacy")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        Vocabulary.build(["a dog"], tokenizer="spacy")


# ---------------------------------------------------------------- a SCAN/SGRAF vocabulary file

SCAN_WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "man", "'s", "dog", ".", "on", "the", "grass", ",",
              "white-walled", "room", "n't"]


def write_scan_vocab(path) -> None:
    """A vocabulary file as SCAN/SGRAF write it: no "tokenizer" key, idx2word keyed by strings."""
    path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(SCAN_WORDS)},
                                "idx2word": {str(i): w for i, w in enumerate(SCAN_WORDS)},
                                "idx": len(SCAN_WORDS)}))


def test_scan_vocab_file_encodes_as_upstream(tmp_path, no_punkt):
    write_scan_vocab(tmp_path / "vocab.json")
    vocab = load_vocab(tmp_path)
    assert vocab.tokenizer == "nltk"
    # ids: a=4 man=5 's=6 dog=7 .=8 on=9 the=10 grass=11 ,=12 white-walled=13 room=14 n't=15; <unk>=3
    assert vocab.encode("A man's dog.") == [1, 4, 5, 6, 7, 8, 2]
    assert vocab.encode("The dog on the grass, a man.") == [1, 10, 7, 9, 10, 11, 12, 4, 5, 8, 2]
    assert vocab.encode("A cat in a white-walled room") == [1, 4, 3, 3, 4, 13, 14, 2]
    assert vocab.encode("Dogs can't sleep.") == [1, 3, 3, 15, 3, 8, 2]
    tokens, lengths = encode_captions(["A man's dog.", "a dog"], vocab)
    assert tokens.tolist() == [[1, 4, 5, 6, 7, 8, 2], [1, 4, 7, 2, 0, 0, 0]] and lengths.tolist() == [7, 4]


def test_the_words_tokenizer_on_the_same_file(tmp_path):
    # The same words under the regex: "man's" is one word the file lacks, and "." is never produced.
    write_scan_vocab(tmp_path / "vocab.json")
    vocab = Vocabulary(load_vocab(tmp_path).idx2word[4:], tokenizer="words")
    assert vocab.encode("A man's dog.") == [1, 4, 3, 7, 2]


def test_vocab_json_round_trip_keeps_the_tokenizer(tmp_path):
    for name in ("words", "nltk"):
        vocab = Vocabulary(["dog", "."], tokenizer=name)
        path = tmp_path / f"{name}.json"
        vocab.save(path)
        assert json.loads(path.read_text(encoding="utf-8"))["tokenizer"] == name
        loaded = Vocabulary.load(path)
        assert loaded.tokenizer == name and loaded == vocab
    assert Vocabulary(["dog"], tokenizer="words") != Vocabulary(["dog"], tokenizer="nltk")
    assert Vocabulary(["dog"]).tokenizer == "nltk"


def test_bad_tokenizer_name_in_file(tmp_path):
    path = tmp_path / "vocab.json"
    for bad in ("spacy", None, ["nltk"]):
        data = Vocabulary(["dog"]).to_json()
        data["tokenizer"] = bad
        path.write_text(json.dumps(data))
        with pytest.raises(DataError, match=r"vocab\.json: unknown tokenizer"):
            Vocabulary.load(path)


def test_build_defaults_to_nltk(no_punkt):
    vocab = Vocabulary.build(["A dog.", "a dog, a cat"])
    # counts: a=3, dog=2, ","=1, "."=1, cat=1 -> by count, ties in code-point order ("," < "." < "c")
    assert vocab.tokenizer == "nltk"
    assert vocab.idx2word[4:] == ["a", "dog", ",", ".", "cat"]
    assert vocab.encode("a cat.") == [1, 4, 8, 7, 2]


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_keeps_the_tokenizer(tmp_path):
    for name in ("words", "nltk"):
        vocab = Vocabulary(["dog", "'s"], tokenizer=name)
        path = save_checkpoint(tmp_path / f"{name}.pt", {}, {}, vocab.to_json())
        restored = restore_vocab(load_checkpoint(path))
        assert restored == vocab and restored.tokenizer == name


def test_checkpoint_from_before_the_key_reads_as_words():
    # Every model trained before vocabularies named a tokenizer was trained on the regex's tokens.
    old = {"vocab": {"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "man's": 4},
                     "idx2word": {"0": "<pad>", "1": "<start>", "2": "<end>", "3": "<unk>", "4": "man's"}, "idx": 5}}
    vocab = restore_vocab(old)
    assert vocab.tokenizer == "words" and vocab.encode("A man's hat") == [1, 3, 4, 3, 2]
    old["vocab"]["tokenizer"] = "spacy"
    with pytest.raises(CheckpointError, match="unknown tokenizer 'spacy'"):
        restore_vocab(old)
