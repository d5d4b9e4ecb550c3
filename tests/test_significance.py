"""Paired tests of table rows against their reference row (research/significance.py)."""

import numpy as np
import pytest

from research import metrics
from research import significance as sig


def _onehot(pred, labels, c=3):
  eye = np.eye(c, dtype=bool)
  return eye[np.asarray(pred)], eye[np.asarray(labels)]


def _record(method, seed, pred, labels, *, kind="finetune", series="", fraction=1.0,
            primary="accuracy"):
  return {"domain": "d", "task": "t", "method": method, "seed": seed, "kind": kind,
          "series": series, "label_fraction": fraction, "primary_metric": primary,
          "metrics": {"test": {"predictions": list(pred), "labels": list(labels)}}}


def test_the_counted_metrics_equal_research_metrics():
  rng = np.random.default_rng(0)
  y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
  p[:40] = y[:40]
  ref = metrics.classification_metrics(np.eye(4)[p], y)
  pa, ya = _onehot(p, y, 4)
  k = sig._counts(np.ones((1, 200)), pa, ya)
  assert sig._metric("accuracy", k)[0] == pytest.approx(ref["accuracy"])
  assert sig._metric("macro_f1", k)[0] == pytest.approx(ref["macro_f1"])


def test_identical_rows_are_level():
  y = np.arange(120) % 3
  a = _onehot(y, y)
  out = sig.compare_seeds("accuracy", [(a, a), (a, a)], samples=300)
  assert out["diff_mean"] == 0 and out["verdict"] == "level" and out["p_value"] > 0.9


def test_a_clearly_better_row_beats_and_a_worse_one_is_below():
  y = np.arange(300) % 3
  worse = y.copy()
  worse[::3] = (worse[::3] + 1) % 3           # a third wrong
  good, bad = _onehot(y, y), _onehot(worse, y)
  up = sig.compare_seeds("macro_f1", [(good, bad)] * 3, samples=500)
  assert up["verdict"] == "beats" and up["ci_low"] > 0 and up["p_value"] < 0.01
  assert up["by_seed"][0]["mcnemar_p"] < 1e-6 and up["by_seed"][0]["a_only"] == 100
  down = sig.compare_seeds("macro_f1", [(bad, good)] * 3, samples=500)
  assert down["verdict"] == "below" and down["ci_high"] < 0


def test_seeds_that_disagree_on_the_sign_are_level():
  y = np.arange(300) % 3
  worse = y.copy()
  worse[::3] = (worse[::3] + 1) % 3
  good, bad = _onehot(y, y), _onehot(worse, y)
  slightly = y.copy()
  slightly[:3] = (slightly[:3] + 1) % 3
  out = sig.compare_seeds("accuracy", [(good, bad), (good, bad), (_onehot(slightly, y), good)],
                          samples=500)
  assert out["diff_mean"] > 0 and out["by_seed"][2]["diff"] < 0
  assert out["verdict"] == "level"
  assert out["diff_std"] > 0 and out["n_seeds"] == 3


def test_rows_scored_on_different_examples_are_refused():
  y = np.arange(30) % 3
  with pytest.raises(ValueError, match="different test examples"):
    sig.compare_seeds("accuracy", [(_onehot(y, y), _onehot(y, np.roll(y, 1)))])


def test_each_row_is_paired_with_its_reference_of_the_same_seed():
  y = list(np.arange(90) % 3)
  ok, off = list(y), [(v + 1) % 3 if i % 4 == 0 else v for i, v in enumerate(y)]
  recs = [_record("control_teacher_init", s, off, y) for s in (0, 1)]
  recs += [_record("kd_soft", s, ok, y, kind="distill") for s in (0, 1, 2)]  # seed 2: no control
  recs += [_record("finetune_full", 0, ok, y), _record("lora", 0, off, y)]
  recs.append({**_record("kd_old", 0, ok, y, kind="distill"), "metrics": {"test": {}}})
  # A student from the pretrained model (cross-family teacher): its control has that init too.
  recs += [{**_record("kd_from_llm", 0, ok, y, kind="distill"), "init": "pretrained"},
           _record("control_pretrained_init", 0, off, y)]
  out = sig.paired_rows(recs, samples=200)
  kd = out[("d", "t", "kd_soft", 1.0)]
  assert kd["vs"] == "control_teacher_init" and kd["n_seeds"] == 2 and kd["diff_mean"] > 0
  assert out[("d", "t", "lora", 1.0)]["vs"] == "finetune_full"
  assert out[("d", "t", "lora", 1.0)]["diff_mean"] < 0
  assert ("d", "t", "kd_old", 1.0) not in out          # no predictions: no paired fields
  assert out[("d", "t", "kd_from_llm", 1.0)]["vs"] == "control_pretrained_init"
  # the teacher-cut control is read against the pretrained-init one: the init's own effect
  assert out[("d", "t", "control_teacher_init", 1.0)]["vs"] == "control_pretrained_init"


def test_a_data_efficiency_student_pairs_with_the_control_at_its_fraction():
  y = list(np.arange(60) % 3)
  off = [(v + 1) % 3 if i % 3 == 0 else v for i, v in enumerate(y)]
  recs = [_record("kd_soft", 0, y, y, kind="distill", series="student", fraction=0.1),
          _record("control_teacher_init", 0, off, y, series="control", fraction=0.1),
          _record("control_teacher_init", 0, y, y, series="control", fraction=0.5)]
  out = sig.paired_rows(recs, samples=200)
  assert set(out) == {("d", "t", "student", 0.1)} and out[("d", "t", "student", 0.1)]["vs"] == \
      "control"
