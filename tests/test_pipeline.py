"""Batch pipeline: shapes, buckets, exact-once eval, deterministic resumable training, sharding."""

import collections

import numpy as np
import pytest

from research.data import pipeline

BUCKETS = (8, 16, 32)


@pytest.fixture(scope="module")
def tokenizer():
  return pipeline.load_tokenizer()


def _records(n, multilabel=False):
  words = "the bank raised its rate while the card arrived late and fees fell".split()
  out = []
  for i in range(n):
    text = " ".join(words[j % len(words)] for j in range(i % 37 + 1))  # 1..37 words
    label = [c for c in range(4) if (i >> c) & 1] if multilabel else i % 3
    out.append({"id": f"r{i}", "text": text, "label": label})
  return out


@pytest.fixture(scope="module")
def data(tokenizer):
  return pipeline.tokenize(_records(101), tokenizer, max_length=32)


def test_tokenize_shapes_and_pairs(tokenizer, data):
  assert data.input_ids.shape == (101, 32) and data.input_ids.dtype == np.int32
  assert data.labels.tolist()[:4] == [0, 1, 2, 0]
  assert data.lengths.max() == 32  # the longest records are truncated to max_length
  pairs = pipeline.tokenize([{"id": "a", "text": "question ?", "text_pair": "some context ."}],
                            tokenizer, max_length=16)
  assert pairs.token_type_ids[0, :pairs.lengths[0]].tolist() == [0] * 4 + [1] * 4
  multi = pipeline.tokenize(_records(6, multilabel=True), tokenizer, 16, num_classes=4)
  assert multi.labels.dtype == np.float32 and multi.labels[5].tolist() == [1, 0, 1, 0]
  with pytest.raises(ValueError, match="num_classes"):
    pipeline.tokenize(_records(3, multilabel=True), tokenizer, 16)


@pytest.mark.parametrize("batch_size", [1, 7, 32, 101, 128])
def test_eval_sees_every_example_once(data, batch_size):
  seen = []
  for batch in pipeline.eval_batches(data, batch_size, BUCKETS):
    width = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == (batch_size, width) and width in BUCKETS
    assert batch["valid"].shape == (batch_size,)
    real = batch["valid"] == 1
    seen.extend(batch["index"][real].tolist())
    assert (batch["index"][~real] == -1).all()
    # Padding rows still attend to something (no empty masks), labels line up with index.
    assert (batch["attention_mask"].sum(1) > 0).all()
    assert (batch["label"][real] == data.labels[batch["index"][real]]).all()
    assert (batch["attention_mask"].sum(1)[real] == data.lengths[batch["index"][real]]).all()
  assert sorted(seen) == list(range(101))


def test_eval_across_hosts_covers_once(data):
  seen = collections.Counter()
  for host in range(2):
    for batch in pipeline.eval_batches(data, 16, BUCKETS, process_index=host, process_count=2):
      assert batch["input_ids"].shape[0] == 8
      seen.update(batch["index"][batch["valid"] == 1].tolist())
  assert sorted(seen) == list(range(101)) and set(seen.values()) == {1}


def test_unlabeled_mode_and_buckets(data):
  batch = next(pipeline.eval_batches(data, 4, BUCKETS, labeled=False))
  assert "label" not in batch
  assert pipeline.bucket_length(9, BUCKETS, 32) == 16
  assert pipeline.bucket_length(20, (8, 64), 24) == 24  # max_length caps the buckets
  with pytest.raises(ValueError, match="labeled=False"):
    next(pipeline.eval_batches(data.subset([0, 1], drop_labels=True), 2, BUCKETS))


def test_train_epochs_cover_data_and_reshuffle(data):
  it = pipeline.TrainIterator(data, 16, BUCKETS, seed=0)
  assert it.steps_per_epoch == 7
  epochs = []
  for _ in range(2):
    order = []
    for _ in range(it.steps_per_epoch):
      batch = next(it)
      order.extend(batch["index"][batch["valid"] == 1].tolist())
    epochs.append(order)
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(101))
  assert epochs[0] != epochs[1]
  assert it.position == {"epoch": 2, "step": 0}
  same = pipeline.TrainIterator(data, 16, BUCKETS, seed=0)
  other = pipeline.TrainIterator(data, 16, BUCKETS, seed=1)
  first = next(same)["index"].tolist()
  assert first == next(pipeline.TrainIterator(data, 16, BUCKETS, seed=0))["index"].tolist()
  assert first != next(other)["index"].tolist()


def test_train_resume_sees_same_batches(data):
  full = pipeline.TrainIterator(data, 16, BUCKETS, seed=3)
  reference = [next(full) for _ in range(12)]  # crosses into epoch 1
  head = pipeline.TrainIterator(data, 16, BUCKETS, seed=3)
  for _ in range(5):
    next(head)
  resumed = pipeline.TrainIterator(data, 16, BUCKETS, seed=3, **head.position)
  for want in reference[5:]:
    got = next(resumed)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_train_host_slices_and_device_shards(data):
  whole = next(pipeline.TrainIterator(data, 16, BUCKETS, seed=0))
  parts = [next(pipeline.TrainIterator(data, 16, BUCKETS, seed=0, process_index=h,
                                       process_count=4)) for h in range(4)]
  for k in whole:
    assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k])
  sharded = pipeline.shard_for_devices(whole, 4)
  assert sharded["input_ids"].shape == (4, 4, whole["input_ids"].shape[1])
  assert sharded["label"].shape == (4, 4)
  with pytest.raises(ValueError, match="not divisible by 3 devices"):
    pipeline.shard_for_devices(whole, 3)
  with pytest.raises(ValueError, match="not divisible by process_count 3"):
    pipeline.TrainIterator(data, 16, BUCKETS, seed=0, process_count=3)


def test_label_fraction_stratified_and_nested():
  records = _records(300)
  small, rest = pipeline.label_fraction(records, 0.1, seed=0)
  large, _ = pipeline.label_fraction(records, 0.5, seed=0)
  assert sorted(np.concatenate([small, rest]).tolist()) == list(range(300))
  assert collections.Counter(records[i]["label"] for i in small) == {0: 10, 1: 10, 2: 10}
  assert set(small.tolist()) <= set(large.tolist())
  tiny, _ = pipeline.label_fraction(records, 0.001, seed=0)
  assert len(tiny) == 3  # at least one label per class
  multi = _records(64, multilabel=True)
  kept, _ = pipeline.label_fraction(multi, 0.25, seed=0)
  assert len(kept) == 16  # 16 label sets × 4 examples each -> one per set
  with pytest.raises(ValueError, match=r"in \(0, 1\]"):
    pipeline.label_fraction(records, 0.0, seed=0)


def test_real_split_end_to_end(tfds_data_dir):
  data = pipeline.load_tokenized("financial_phrasebank", "allagree", "validation", max_length=64,
                                 data_dir=tfds_data_dir)
  assert data is pipeline.load_tokenized("financial_phrasebank", "allagree", "validation",
                                         max_length=64, data_dir=tfds_data_dir)  # memoized
  batches = list(pipeline.eval_batches(data, 100, (32, 64)))
  assert sum(b["valid"].sum() for b in batches) == len(data) == 226
  assert {b["input_ids"].shape[1] for b in batches} <= {32, 64}
