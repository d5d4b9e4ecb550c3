"""A learnable toy classification split for tests and smoke runs (no download, no tokenizer)."""

from __future__ import annotations

import numpy as np

from research.data import pipeline

NAME = "synthetic"
SIZES = {"train": 256, "validation": 64, "test": 64}


def synthetic_split(n: int, *, num_classes: int, vocab_size: int, max_length: int,
                    seed: int) -> pipeline.TokenizedSplit:
  """Class c draws most of its tokens from vocab band c, so a small encoder learns it quickly."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, num_classes, n).astype(np.int32)
  lengths = rng.randint(max(2, max_length // 4), max_length + 1, n).astype(np.int32)
  band = max((vocab_size - 1) // num_classes, 1)
  ids = np.zeros((n, max_length), np.int32)
  for i in range(n):
    own = 1 + labels[i] * band + rng.randint(0, band, lengths[i])
    noise = rng.randint(1, vocab_size, lengths[i])
    ids[i, :lengths[i]] = np.where(rng.rand(lengths[i]) < 0.7, own, noise)
  return pipeline.TokenizedSplit(
      input_ids=ids, token_type_ids=np.zeros_like(ids), lengths=lengths, labels=labels,
      ids=tuple(f"synthetic-{seed}-{i}" for i in range(n)), pad_id=0)


def splits(*, num_classes: int, vocab_size: int, max_length: int, seed: int
           ) -> dict[str, pipeline.TokenizedSplit]:
  """The train/validation/test splits of a smoke run (seeded by the run's seed)."""
  return {s: synthetic_split(n, num_classes=num_classes, vocab_size=vocab_size,
                             max_length=max_length, seed=seed * 10 + k)
          for k, (s, n) in enumerate(SIZES.items())}
