"""Classification metrics on host numpy arrays: accuracy, macro-F1, per-class report."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    f1 = np.where(precision + recall > 0,
                  2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
  return precision, recall, f1


def classification_metrics(logits_NxC: np.ndarray, labels: np.ndarray, *,
                           multilabel: bool = False,
                           label_names: Sequence[str] | None = None) -> dict:
  """Accuracy, macro-F1 and a per-class report.

  Args:
    logits_NxC: float N×C.
    labels: int N (single-label) or {0,1} N×C (multilabel).
    multilabel: sigmoid > 0.5 per class; accuracy is exact-match (subset) accuracy, and
      micro-F1 is added.
    label_names: C names for the per-class report (default: "0".."C-1").

  Returns:
    {"accuracy", "macro_f1", ["micro_f1",] "num_examples", "per_class": {name: {"precision",
    "recall", "f1", "support"}}}. Macro-F1 averages the classes with support or predictions.
  """
  logits_NxC = np.asarray(logits_NxC, np.float32)
  n, c = logits_NxC.shape
  names = list(label_names) if label_names is not None else [str(i) for i in range(c)]
  if len(names) != c:
    raise ValueError(f"{len(names)} label names for {c} classes")
  if multilabel:
    y_NxC = np.asarray(labels).astype(bool)
    p_NxC = logits_NxC > 0.0
    accuracy = float(np.mean(np.all(y_NxC == p_NxC, axis=1))) if n else 0.0
  else:
    y = np.asarray(labels).astype(np.int64)
    pred = logits_NxC.argmax(-1)
    accuracy = float(np.mean(pred == y)) if n else 0.0
    y_NxC = np.eye(c, dtype=bool)[y]
    p_NxC = np.eye(c, dtype=bool)[pred]
  tp = np.sum(y_NxC & p_NxC, axis=0).astype(np.float64)
  fp = np.sum(~y_NxC & p_NxC, axis=0).astype(np.float64)
  fn = np.sum(y_NxC & ~p_NxC, axis=0).astype(np.float64)
  precision, recall, f1 = _prf(tp, fp, fn)
  present = (tp + fp + fn) > 0
  out = {
      "accuracy": accuracy,
      "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
      "num_examples": int(n),
  }
  if multilabel:
    out["micro_f1"] = float(_prf(tp.sum(), fp.sum(), fn.sum())[2])
  out["per_class"] = {
      name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "support": int(tp[i] + fn[i])}
      for i, name in enumerate(names)}
  return out
