"""research.data.load/info on the real datasets: counts from SOURCE.md, determinism, offline."""

import collections
import json
import socket
import sys

import pytest
import tensorflow_datasets as tfds

import research.data as rd
from research.data import loading

# SOURCE.md counts (and our derived split sizes) per (name, config).
EXPECTED_SPLITS = {
    ("financial_phrasebank", "allagree"): {"train": 1812, "validation": 226, "test": 226},
    ("financial_phrasebank", "75agree"): {"train": 2763, "validation": 345, "test": 345},
    ("financial_phrasebank", "66agree"): {"train": 3374, "validation": 422, "test": 421},
    ("financial_phrasebank", "50agree"): {"train": 3876, "validation": 485, "test": 485},
    ("banking77", None): {"train": 9003, "validation": 1000, "test": 3080},
    ("claudette_tos", "binary"): {"train": 5532, "validation": 2275, "test": 1607},
    ("claudette_tos", "multilabel"): {"train": 5532, "validation": 2275, "test": 1607},
    ("nicta_piboso", None): {"train": 6979, "validation": 801, "test": 1991},
    ("pubmedqa_pqal", None): {"train": 450, "validation": 50, "test": 500},
}
PHRASEBANK_TOTALS = {"allagree": (2264, 570, 303, 1391), "75agree": (3453, 887, 420, 2146),
                     "66agree": (4217, 1168, 514, 2535), "50agree": (4846, 1363, 604, 2879)}


def _counts(records, names):
  return collections.Counter(names[r["label"]] for r in records)


@pytest.mark.parametrize("name,config", list(EXPECTED_SPLITS))
def test_split_sizes_and_disjoint_ids(name, config, tfds_data_dir):
  meta = rd.info(name, config, data_dir=tfds_data_dir)
  assert meta.splits == EXPECTED_SPLITS[name, config]
  ids = {s: [r["id"] for r in rd.load(name, config, s, data_dir=tfds_data_dir)]
         for s in meta.splits}
  assert {s: len(v) for s, v in ids.items()} == meta.splits
  all_ids = [i for v in ids.values() for i in v]
  assert len(all_ids) == len(set(all_ids)), "ids repeat within or across splits"


@pytest.mark.parametrize("config", list(PHRASEBANK_TOTALS))
def test_phrasebank_label_totals_and_stratification(config, tfds_data_dir):
  meta = rd.info("financial_phrasebank", config, data_dir=tfds_data_dir)
  by_split = {s: rd.load("financial_phrasebank", config, s, data_dir=tfds_data_dir)
              for s in ("train", "validation", "test")}
  total = _counts([r for v in by_split.values() for r in v], meta.label_names)
  n, pos, neg, neu = PHRASEBANK_TOTALS[config]
  assert (sum(total.values()), total["positive"], total["negative"], total["neutral"]) == (
      n, pos, neg, neu)
  for split, frac in (("validation", 0.1), ("test", 0.1)):
    counts = _counts(by_split[split], meta.label_names)
    for label in meta.label_names:  # stratified: each class within a few examples of 10%
      assert abs(counts[label] - frac * total[label]) <= 3, (split, label)
  # Duplicate sentences never straddle splits.
  split_of = {}
  for split, records in by_split.items():
    for r in records:
      assert split_of.setdefault(r["text"], split) == split, r["text"]


def test_banking77_labels_and_carved_validation(tfds_data_dir, raw_data_root):
  meta = rd.info("banking77", None, data_dir=tfds_data_dir)
  assert meta.label_names == tuple(json.loads((raw_data_root / "banking77/categories.json")
                                              .read_text()))
  assert (meta.num_classes, meta.multilabel, meta.carved_validation) == (77, False, True)
  pool = rd.load("banking77", None, "train+validation", data_dir=tfds_data_dir)
  test = rd.load("banking77", None, "test", data_dir=tfds_data_dir)
  assert (len(pool), len(test)) == (10003, 3080)
  per_class = collections.Counter(r["label"] for r in pool)
  assert (min(per_class.values()), max(per_class.values())) == (35, 187)
  assert set(collections.Counter(r["label"] for r in test).values()) == {40}
  # Quoted texts with newlines are one record each (train.csv has 10,017 physical lines).
  assert sum("\n" in r["text"] for r in pool) > 0


def test_claudette_configs(tfds_data_dir):
  binary = rd.load("claudette_tos", "binary", "train+validation+test", data_dir=tfds_data_dir)
  multi = rd.load("claudette_tos", "multilabel", "train+validation+test", data_dir=tfds_data_dir)
  assert sum(r["label"] for r in binary) == 1032
  meta = rd.info("claudette_tos", "multilabel", data_dir=tfds_data_dir)
  assert meta.multilabel and meta.num_classes == 8
  counts = collections.Counter(meta.label_names[c] for r in multi for c in r["label"])
  assert counts == {"limitation_of_liability": 296, "unilateral_termination": 236,
                    "unilateral_change": 188, "content_removal": 118, "contract_by_using": 117,
                    "choice_of_law": 70, "jurisdiction": 68, "arbitration": 44}
  assert [r["id"] for r in binary] == [r["id"] for r in multi]
  first_test = rd.load("claudette_tos", "binary", "test", data_dir=tfds_data_dir)[0]
  assert first_test["id"].startswith("Academia-")  # document split, LexGLUE order


def test_nicta_and_pubmedqa_records(tfds_data_dir):
  nicta = rd.load("nicta_piboso", None, "validation", data_dir=tfds_data_dir)
  meta = rd.info("nicta_piboso", None, data_dir=tfds_data_dir)
  assert _counts(nicta, meta.label_names) == {"background": 191, "outcome": 378, "other": 136,
                                              "population": 57, "intervention": 33,
                                              "study design": 6}
  qa = rd.load("pubmedqa_pqal", None, "test", data_dir=tfds_data_dir)
  meta = rd.info("pubmedqa_pqal", None, data_dir=tfds_data_dir)
  assert meta.has_text_pair and meta.label_names == ("yes", "no", "maybe")
  assert _counts(qa, meta.label_names) == {"yes": 276, "no": 169, "maybe": 55}
  r = qa[0]
  assert set(r) == {"id", "text", "text_pair", "label", "contexts", "long_answer"}
  assert r["text_pair"] == " ".join(r["contexts"]) and r["long_answer"] and r["text"].endswith("?")


@pytest.mark.parametrize("name,config", [("financial_phrasebank", "50agree"),
                                         ("pubmedqa_pqal", None)])
def test_build_twice_same_ids(name, config, tfds_data_dir, tmp_path):
  """Seeded splits are identical across fresh builds (they use no library RNG)."""
  for split in ("train", "validation", "test"):
    first = [r["id"] for r in rd.load(name, config, split, data_dir=tfds_data_dir)]
    again = [r["id"] for r in rd.load(name, config, split, data_dir=tmp_path)]
    assert first == again


def test_build_is_offline_and_avoids_catalog(tmp_path, monkeypatch):
  """A build must not open sockets, look up the TFDS catalog or import TensorFlow."""

  def forbid(*args, **kwargs):
    raise AssertionError(f"network or catalog access: {args[:2]}")

  monkeypatch.setattr(socket.socket, "connect", forbid)
  monkeypatch.setattr(tfds, "builder", forbid)
  monkeypatch.setattr(tfds, "load", forbid)
  records = rd.load("pubmedqa_pqal", None, "validation", data_dir=tmp_path)
  assert len(records) == 50
  assert "tensorflow" not in sys.modules


def test_bad_names(tfds_data_dir):
  with pytest.raises(ValueError, match="unknown dataset 'nope'"):
    rd.load("nope", None, "train")
  with pytest.raises(ValueError, match=r"unknown config 'x' for financial_phrasebank.*allagree"):
    rd.info("financial_phrasebank", "x")
  with pytest.raises(ValueError, match="banking77 has no configs"):
    rd.info("banking77", "x")
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    rd.load("pubmedqa_pqal", None, "dev", data_dir=tfds_data_dir)


def test_fast_read_matches_tfds_decoder(tfds_data_dir):
  for name, config in (("pubmedqa_pqal", None), ("claudette_tos", "multilabel")):
    builder = rd.get_builder(name, config, data_dir=tfds_data_dir)
    rd.prepare(builder)
    fast = loading.read_split(builder, "validation")
    source = builder.as_data_source(split="validation")
    slow = [{k: loading._decode(builder.info.features[k], v) for k, v in row.items()}
            for row in source]
    assert fast == slow
