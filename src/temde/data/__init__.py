"""Data layer: SCAN precomp files, vocabulary, tokenizer and padded batches with masks."""
from temde.data.batches import Batch, CaptionDataset, collate, encode_captions, make_loader, pad_sequences
from temde.data.precomp import (PrecompSplit, available_splits, build_and_save_vocab, caption_file, image_file,
                                load_split, load_vocab, read_captions, write_split)
from temde.data.tokenizer import tokenize
from temde.data.vocab import END, PAD, START, UNK, Vocabulary

__all__ = [
    "Batch", "CaptionDataset", "collate", "encode_captions", "make_loader", "pad_sequences",
    "PrecompSplit", "available_splits", "build_and_save_vocab", "caption_file", "image_file", "load_split",
    "load_vocab", "read_captions", "write_split", "tokenize", "PAD", "START", "END", "UNK", "Vocabulary",
]
