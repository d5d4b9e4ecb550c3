"""Paired significance of one model against another on the same test examples.

McNemar's exact test (McNemar 1947) on the examples exactly one of the two gets right, and a paired
bootstrap (Efron & Tibshirani 1993; Koehn 2004 for NLP) of the difference in a metric, resampling
examples with replacement and scoring both models on each resample.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from research import metrics


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
  """Two-sided exact McNemar test: {"a_only", "b_only", "p_value"}."""
  a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
  if a.shape != b.shape:
    raise ValueError(f"paired test: {a.shape} vs {b.shape} examples; pair the same test set.")
  a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
  n, k = a_only + b_only, min(a_only, b_only)
  p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
  return {"a_only": a_only, "b_only": b_only, "p_value": p}


def paired_bootstrap(metric: Callable[[np.ndarray, np.ndarray], float], pred_a: np.ndarray,
                     pred_b: np.ndarray, labels: np.ndarray, *, samples: int = 2000,
                     seed: int = 0, level: float = 0.95) -> dict:
  """metric(a) − metric(b) and its bootstrap confidence interval over resampled examples."""
  pred_a, pred_b, labels = (np.asarray(x) for x in (pred_a, pred_b, labels))
  rng = np.random.default_rng(seed)
  n = len(labels)
  diffs = np.empty(samples)
  for i in range(samples):
    idx = rng.integers(0, n, n)
    diffs[i] = metric(pred_a[idx], labels[idx]) - metric(pred_b[idx], labels[idx])
  lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
  return {"diff": float(metric(pred_a, labels) - metric(pred_b, labels)),
          "ci_low": float(lo), "ci_high": float(hi)}


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(pred == labels))


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
  """research/metrics.py's macro-F1 (mean over classes present in labels or predictions)."""
  c = int(num_classes or max(pred.max(), labels.max()) + 1)
  return metrics.classification_metrics(np.eye(c)[pred], labels)["macro_f1"]


def verdict(ci_low: float, ci_high: float) -> str:
  """"beats" / "below" when the CI excludes 0, else "level"."""
  return "beats" if ci_low > 0 else "below" if ci_high < 0 else "level"
