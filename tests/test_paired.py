"""Paired significance: McNemar's exact test and the paired bootstrap, against hand counts."""

import math

import numpy as np
import pytest

from research import paired


def test_mcnemar_counts_the_discordant_pairs_and_gives_the_exact_two_sided_p():
  a = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
  b = np.array([1, 0, 0, 0, 1, 1, 0, 1], bool)
  out = paired.mcnemar_exact(a, b)  # a-only 3, b-only 1: p = 2 * (C(4,0) + C(4,1)) / 16
  assert (out["a_only"], out["b_only"]) == (3, 1)
  assert out["p_value"] == pytest.approx(2 * (1 + 4) / 16)
  assert paired.mcnemar_exact(a, a)["p_value"] == 1.0
  with pytest.raises(ValueError, match="same test set"):
    paired.mcnemar_exact(a, b[:4])


def test_bootstrap_interval_holds_the_observed_difference_and_excludes_zero_for_a_clear_win():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 400)
  good = np.where(rng.random(400) < 0.9, labels, (labels + 1) % 3)
  bad = np.where(rng.random(400) < 0.6, labels, (labels + 1) % 3)
  out = paired.paired_bootstrap(paired.accuracy, good, bad, labels, samples=500)
  assert out["ci_low"] < out["diff"] < out["ci_high"]
  assert paired.verdict(out["ci_low"], out["ci_high"]) == "beats"
  same = paired.paired_bootstrap(paired.accuracy, good, good, labels, samples=200)
  assert paired.verdict(same["ci_low"], same["ci_high"]) == "level"


def test_macro_f1_averages_per_class_f1():
  labels = np.array([0, 0, 1, 1, 2, 2])
  pred = np.array([0, 1, 1, 1, 2, 0])
  f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1)]
  assert paired.macro_f1(pred, labels) == pytest.approx(sum(f1) / 3)
  assert not math.isnan(paired.macro_f1(np.zeros(3, int), np.array([0, 1, 2])))
