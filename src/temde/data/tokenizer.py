"""Caption tokenizer: lower-case words, no downloads.

The field tokenises with NLTK's `word_tokenize`, which needs a model download; a regular expression gives the
same words for plain captions. Punctuation is dropped (it carries no retrieval signal and would only grow the
vocabulary); an apostrophe inside a word is kept so "man's" stays one token.
"""
from __future__ import annotations

import re

# A word: letters/digits (any script, so "café" stays whole), optionally joined by inner apostrophes.
# [^\W_] is \w without the underscore.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Typographic apostrophes are normalised so "man’s" and "man's" give the same token.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case word tokens: "A dog, running!" -> ["a", "dog", "running"]."""
    return _WORD.findall(text.lower().translate(_APOSTROPHES))
