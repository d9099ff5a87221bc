"""Word vocabulary in the field's JSON format: {"word2idx": {...}, "idx2word": {"0": "<pad>", ...}, "idx": n}.

Ids 0-3 are reserved as in SCAN/SGRAF: <pad>=0 (so zero-padding is padding), <start>=1, <end>=2, <unk>=3.
A vocabulary also names the tokenizer that splits its captions (temde.data.tokenizer), because its words only
mean something under that split. Our files record it under an extra key "tokenizer"; the field's files have no
such key and were built with NLTK, so a file without it reads as "nltk".
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from temde.data.tokenizer import DEFAULT_TOKENIZER, check_tokenizer, tokenize
from temde.errors import DataError

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it replaces `path` in one step, on error it is removed.

    Same folder, so os.replace is a rename on one filesystem and a reader never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a data file should read like any other
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Vocabulary:
    """Word <-> id mapping. `Vocabulary(words)` puts the four special tokens first, then `words` in order.

    `tokenizer` names how a caption string is split into words (see temde.data.tokenizer).
    """

    def __init__(self, words: Iterable[str] = (), tokenizer: str = DEFAULT_TOKENIZER):
        self.tokenizer = check_tokenizer(tokenizer)
        self.idx2word: list[str] = list(SPECIALS)
        self.word2idx: dict[str, int] = {w: i for i, w in enumerate(SPECIALS)}
        for word in words:
            if word in self.word2idx:
                raise ValueError(f"duplicate word in vocabulary: {word!r}")
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, tokenizer: str = DEFAULT_TOKENIZER) -> Vocabulary:
        """Words of `captions` seen at least `min_count` times, most frequent first (ties alphabetical)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        check_tokenizer(tokenizer)
        counts = Counter(token for caption in captions for token in tokenize(caption, tokenizer))
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(kept, tokenizer)

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: str) -> bool:
        return word in self.word2idx

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vocabulary) and self.idx2word == other.idx2word
                and self.tokenizer == other.tokenizer)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, tokenizer={self.tokenizer!r})"

    def tokenize(self, text: str) -> list[str]:
        """`text` split as this vocabulary's captions were."""
        return tokenize(text, self.tokenizer)

    def encode(self, caption: str | Sequence[str]) -> list[int]:
        """<start> ids... <end>; unknown words map to <unk>. A string is tokenized with this vocabulary's
        tokenizer, a list is taken as tokens."""
        tokens = self.tokenize(caption) if isinstance(caption, str) else caption
        return [START, *(self.word2idx.get(t, UNK) for t in tokens), END]

    def decode(self, ids: Iterable[int]) -> str:
        """Words joined by spaces; stops at <end>, skips <pad>/<start>."""
        words = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (PAD, START):
                continue
            words.append(self.idx2word[i] if 0 <= i < len(self.idx2word) else SPECIALS[UNK])
        return " ".join(words)

    def to_json(self) -> dict:
        # idx2word keys are strings because JSON object keys are; that is also how the field's files store them.
        return {"word2idx": dict(self.word2idx),
                "idx2word": {str(i): w for i, w in enumerate(self.idx2word)},
                "idx": len(self.idx2word),
                "tokenizer": self.tokenizer}

    def save(self, path: str | os.PathLike) -> None:
        with atomic_write(path) as f:
            json.dump(self.to_json(), f, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Read a vocabulary JSON (ours or SCAN/SGRAF's); any inconsistency is a DataError naming the file.

        A file without "tokenizer" (SCAN/SGRAF's) gets "nltk", the tokenizer it was built with."""
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a valid JSON vocabulary ({exc})") from None
        if not isinstance(data, dict) or not {"word2idx", "idx2word"} <= data.keys():
            raise DataError(f"{path}: vocabulary JSON needs the keys 'word2idx' and 'idx2word'")
        try:
            idx2word = {int(i): w for i, w in data["idx2word"].items()}
            word2idx = {w: int(i) for w, i in data["word2idx"].items()}
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: 'idx2word' must map integer ids to words and 'word2idx' words to ids") from None
        n = len(idx2word)
        if sorted(idx2word) != list(range(n)):
            raise DataError(f"{path}: ids in 'idx2word' are not contiguous from 0")
        words = [idx2word[i] for i in range(n)]
        if any(not isinstance(w, str) for w in words):
            raise DataError(f"{path}: 'idx2word' values must be strings")
        if tuple(words[:len(SPECIALS)]) != SPECIALS:
            raise DataError(f"{path}: ids 0-3 must be {', '.join(SPECIALS)}, found {words[:len(SPECIALS)]}")
        if word2idx != {w: i for i, w in enumerate(words)}:
            raise DataError(f"{path}: 'word2idx' and 'idx2word' disagree")
        if "idx" in data and data["idx"] != n:
            raise DataError(f"{path}: 'idx' is {data['idx']} but there are {n} words")
        try:
            return cls(words[len(SPECIALS):], data.get("tokenizer", "nltk"))
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
