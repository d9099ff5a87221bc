"""Caption tokenizers, by name: "nltk" (the field's, the default) and "words" (a regex). Nothing is downloaded.

"nltk" tokenises as SCAN and SGRAF do, `nltk.tokenize.word_tokenize(caption.lower())`, so a vocabulary JSON of
theirs maps captions to exactly the ids it was built for: punctuation and clitics are tokens ("A man's dog." ->
["a", "man", "'s", "dog", "."]). `word_tokenize` first splits sentences with NLTK's punkt model, a data download
this project never makes. When that model is installed locally it is used; otherwise NLTK's word tokenizer runs
on the whole line, which is the same for a one-sentence caption. The one difference: a period inside a
multi-sentence caption stays on its word ("a dog runs. a cat sleeps." -> "runs." instead of "runs", "."); only
the line's last period is split off.

"words" keeps lower-case words and drops punctuation; an apostrophe inside a word is kept so "man's" stays one
token. It was the default for vocabularies this project built before "nltk" became the default.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable

# A word: letters/digits (any script, so "café" stays whole), optionally joined by inner apostrophes.
# [^\W_] is \w without the underscore.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Typographic apostrophes are normalised so "man’s" and "man's" give the same token.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

DEFAULT_TOKENIZER = "nltk"


def words_tokenize(text: str) -> list[str]:
    """Lower-case word tokens, punctuation dropped: "A dog, running!" -> ["a", "dog", "running"]."""
    return _WORD.findall(text.lower().translate(_APOSTROPHES))


@functools.cache
def punkt_installed() -> bool:
    """Whether NLTK's punkt sentence model (the one `word_tokenize` loads) is on disk; looked up once, never fetched."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        return False
    return True


@functools.cache
def _nltk_word_tokenizer():
    # Imported on first use: importing nltk takes a quarter of a second, which a "words" user need not pay.
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def nltk_tokenize(text: str) -> list[str]:
    """SCAN/SGRAF's tokens: `word_tokenize(text.lower())`, or its word tokenizer alone without punkt (see above)."""
    text = text.lower()
    if punkt_installed():
        import nltk

        return nltk.word_tokenize(text)
    return _nltk_word_tokenizer().tokenize(text)


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"nltk": nltk_tokenize, "words": words_tokenize}


def check_tokenizer(name: object) -> str:
    """`name` if it names a tokenizer, else ValueError listing the known names."""
    if not isinstance(name, str) or name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    return name


def tokenize(text: str, tokenizer: str = DEFAULT_TOKENIZER) -> list[str]:
    """Split a caption into tokens with the named tokenizer: "A man's dog." -> ["a", "man", "'s", "dog", "."]."""
    return TOKENIZERS[check_tokenizer(tokenizer)](text)
