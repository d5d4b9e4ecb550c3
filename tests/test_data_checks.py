"""Data checks and baselines (research/data/checks.py) on tiny splits and tiny CSV folders."""

import json

import numpy as np
import pytest

import research.data as rd
from experiments import datasets as datasets_cli
from research import report
from research.data import checks
from research.data import local_text

NAMES = ["neg", "pos"]


def _ex(text, label):
  return {"text": text, "label": label}


def _splits(train, validation=None, test=None):
  validation = validation or [_ex("val alpha", 0), _ex("val beta", 1)]
  test = test or [_ex("test gamma", 0), _ex("test delta", 1)]
  return {"train": train, "validation": validation, "test": test}


def _train(n=20):
  return [_ex(f"train sentence {i}", i % 2) for i in range(n)]


def test_normalise_ignores_case_punctuation_and_spacing():
  assert checks.normalise("Hello,  World!") == checks.normalise("hello world") == "hello world"
  assert checks.normalise("Ｆｕｌｌ width") == "full width"  # NFKC
  assert checks.normalise("...") == ""


def test_duplicates_across_user_splits_are_refused_with_the_fix():
  test = [_ex("Train sentence 3!", 1), _ex("train sentence 4", 0), _ex("unseen", 1)]
  r = checks.run_checks(_splits(_train(), test=test), NAMES, max_words=50,
                        user_splits={"train", "test"}, fix="use dedupe=strict")
  across = {(d["a"], d["b"]): d for d in r["used"]["duplicates"]["across"]}
  assert across["train", "test"]["exact"] == 1 and across["train", "test"]["normalised"] == 2
  assert across["train", "test"]["fraction"] == pytest.approx(2 / 3)
  assert len(r["errors"]) == 1
  assert "2 of test's 3 rows (67%) also appear in train" in r["errors"][0]
  assert r["errors"][0].endswith("use dedupe=strict")
  # warn instead of refuse: the same finding, loud, and no error
  r = checks.run_checks(_splits(_train(), test=test), NAMES, max_words=50,
                        user_splits={"train", "test"}, on_overlap="warn")
  assert not r["errors"] and any(w.startswith("LEAKAGE: 2 of test's") for w in r["warnings"])


def test_overlap_with_a_carved_split_is_a_warning_not_a_refusal():
  val = [_ex("train sentence 1", 1), _ex("other", 0)]
  r = checks.run_checks(_splits(_train(), validation=val), NAMES, max_words=50,
                        user_splits={"train", "test"})
  assert not r["errors"]
  assert any("LEAKAGE: 1 of validation's 2 rows" in w for w in r["warnings"])


def test_duplicates_within_a_split():
  train = _train() + [_ex("TRAIN sentence 1", 1), _ex("train sentence 2", 0)]
  d = checks.duplicates(_splits(train))["within"]["train"]
  assert d == {"rows": 22, "exact": 1, "normalised": 2}


def test_single_class_train_is_an_error_and_single_class_test_a_warning():
  one = [_ex(f"s {i}", 1) for i in range(10)]
  r = checks.run_checks(_splits(one), NAMES, max_words=50)
  assert r["errors"] and r["errors"][0].startswith("train has 1 class(es) ['pos']")
  test = [_ex("a b", 0), _ex("c d", 0)]
  r = checks.run_checks(_splits(_train(), test=test), NAMES, max_words=50)
  assert not r["errors"]
  assert any(w.startswith("test has one class ['neg']") for w in r["warnings"])
  assert r["used"]["class_counts"]["test"] == {"neg": 2, "pos": 0}


def test_label_noise_same_text_different_labels():
  train = _train() + [_ex("Refund please", 0), _ex("refund please!", 1), _ex("refund please", 1)]
  c = checks.label_conflicts(_splits(train), NAMES)
  assert c["texts"] == 1 and c["rows"] == 3
  assert c["examples"][0]["labels"] == {"neg": 1, "pos": 2}
  r = checks.run_checks(_splits(train), NAMES, max_words=50)
  assert any("1 texts (3 rows) carry different labels" in w for w in r["warnings"])


def test_long_and_wordless_texts():
  train = _train() + [_ex("word " * 30, 0), _ex("?!", 1)]
  n = checks.text_lengths(_splits(train), max_words=10)["train"]
  assert n["long"] == 1 and n["empty"] == 1 and n["max_words"] == 30


def test_report_files(tmp_path):
  held = lambda name: [_ex(f"{name} {i}", i % 2) for i in range(checks.TINY_SPLIT)]  # noqa: E731
  r = checks.run_checks(_splits(_train(), held("val"), held("test")), NAMES, max_words=50)
  paths = checks.write_report(r, tmp_path)
  assert json.loads(paths["json"].read_text())["errors"] == []
  md = paths["md"].read_text()
  assert "| train | 20 | 10 | 10 |" in md and "No problems found." in md


def _separable(n, seed=0):
  rng = np.random.default_rng(seed)
  words = {0: ["awful", "broken", "late"], 1: ["great", "quick", "lovely"]}
  return [_ex(" ".join(rng.choice(words[i % 2], 3)) + f" item{i}", i % 2) for i in range(n)]


def test_baselines_majority_and_tfidf_pick_l2_on_validation_only():
  train = _separable(60) + [_ex(f"great lovely extra{i}", 1) for i in range(20)]
  splits = {"train": train, "validation": _separable(20, 1), "test": _separable(20, 2)}
  maj, lex = checks.baseline_records(splits, NAMES, domain="d", task="t")
  assert maj["method"] == "majority_class" and maj["majority_label"] == "pos"
  assert maj["metrics"]["test"]["accuracy"] == pytest.approx(0.5)
  assert lex["kind"] == "baseline" and lex["metrics"]["test"]["accuracy"] == 1.0
  assert set(lex["l2_sweep"]) == {"1e-05", "0.0001", "0.001", "0.01"}
  # The choice does not move when test changes (flipped test labels): test is only scored.
  flipped = dict(splits, test=[dict(ex, label=1 - ex["label"]) for ex in splits["test"]])
  again = checks.baseline_records(flipped, NAMES, domain="d", task="t")[1]
  assert again["l2"] == lex["l2"] and again["metrics"]["test"]["accuracy"] == 0.0


def test_baseline_records_are_table_rows(tmp_path):
  splits = {"train": _separable(40), "validation": _separable(10, 1), "test": _separable(10, 2)}
  (tmp_path / "baselines").mkdir()
  for rec in checks.baseline_records(splits, NAMES, domain="d", task="t"):
    (tmp_path / "baselines" / f"{rec['method']}.json").write_text(json.dumps(rec))
  rows = {r["method"]: r for r in report.aggregate(report.load_records(tmp_path))}
  assert rows["tfidf_logreg"]["kind"] == "baseline"
  assert rows["majority_class"]["accuracy_mean"] == pytest.approx(0.5)


# --------------------------------------------------------------------- local_text: dedupe, spec


def _csv(path, rows):
  path.write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))


def test_carving_drops_repeated_train_rows_first(tmp_path):
  rows = [(f"sentence {i}", "ab"[i % 2]) for i in range(40)]
  _csv(tmp_path / "train.csv", rows + [(f"Sentence {i}!", "ab"[i % 2]) for i in range(10)])
  meta = rd.info("local_text", None, manual_dir=tmp_path, data_dir=tmp_path / "d")
  assert sum(meta.splits.values()) == 40 and meta.metadata["dropped_duplicates"] == 10
  texts = {s: {checks.normalise(r["text"]) for r in rd.load(
      "local_text", None, s, manual_dir=tmp_path, data_dir=tmp_path / "d")} for s in meta.splits}
  assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
  off = rd.info("local_text", "dedupe=off", manual_dir=tmp_path, data_dir=tmp_path / "d")
  assert sum(off.splits.values()) == 50


def test_strict_dedupe_drops_train_rows_that_are_in_your_test(tmp_path):
  _csv(tmp_path / "train.csv", [(f"sentence {i}", "ab"[i % 2]) for i in range(40)])
  _csv(tmp_path / "test.csv", [("Sentence 1", "b"), ("new one", "a")])
  given, _ = local_text.user_splits(tmp_path)
  r = checks.run_checks(given, ["a", "b"], max_words=50, user_splits=set(given))
  assert r["errors"]  # the overlap as given
  meta = rd.info("local_text", "dedupe=strict", manual_dir=tmp_path, data_dir=tmp_path / "d")
  assert meta.metadata["dropped_overlap"] == 1
  assert meta.splits["train"] + meta.splits["validation"] == 39


def test_column_spec_parsing():
  s = local_text.LocalTextSpec.parse("text=sentence,label=intent,labels=neg|pos,dedupe=strict")
  assert (s.text, s.label, s.labels, s.dedupe) == ("sentence", "intent", ("neg", "pos"), "strict")
  # Another dataset's config name left in data.config after switching data.name: ignored.
  assert local_text.LocalTextSpec.parse("binary") == local_text.LocalTextSpec()
  with pytest.raises(ValueError, match="dedupe='maybe': use one of auto, strict, off"):
    local_text.LocalTextSpec.parse("dedupe=maybe")
  with pytest.raises(ValueError, match="spec item 'colour=red'"):
    local_text.LocalTextSpec.parse("text=a,colour=red")


def test_datasets_cli_accepts_a_column_spec_with_commas():
  assert datasets_cli.parse_datasets("local_text/text=text,label=label") == [
      ("local_text", "text=text,label=label")]
  assert datasets_cli.parse_datasets("banking77,local_text/text=a,label=b,claudette_tos/binary") == [
      ("banking77", None), ("local_text", "text=a,label=b"), ("claudette_tos", "binary")]
  with pytest.raises(ValueError, match="unknown dataset 'label=b'"):
    datasets_cli.parse_datasets("banking77,label=b")
