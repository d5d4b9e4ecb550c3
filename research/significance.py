"""Table rows against their reference row: paired tests over the same test examples, per seed.

A KD row is read against the control of its initialisation, trained on ground truth only: cut
from the same teacher (`control_teacher_init`) or, for a student that starts from the pretrained
model (a cross-family teacher has no layers to cut), `control_pretrained_init`; a
parameter-efficient fine-tune against full fine-tuning (`REFERENCE`). Seeds present in both rows
are paired: per seed, the difference of the task's primary metric, McNemar's exact p on
accuracy (research/paired.py) and a paired-bootstrap 95% interval. Across seeds: mean ± sample std
of the per-seed differences (training noise), a bootstrap interval of the seed-mean difference
(test-sample noise; the examples are resampled jointly for all seeds, which share the test set),
and the p-value of an approximate randomisation test of it (Noreen 1989: each example's two
predictions swapped at random; the standard test for F1-like metrics, Yeh 2000).

Verdict: "beats" / "below" when the interval of the seed-mean excludes 0 *and* every seed's
difference has that sign; else "level". Records need `metrics.test.predictions` and `labels`
(written by the classification task since issue 15); rows without them get no paired fields.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from research import paired

SAME_INIT_CONTROL = "control_teacher_init"
PRETRAINED_INIT_CONTROL = "control_pretrained_init"  # for students that start from the pretrained model
# Fine-tunes read against full fine-tuning of the same model (last-k vs full, PEFT vs full).
# The teacher-cut control against the pretrained-init one: what the teacher's layers alone give.
REFERENCE = {"finetune_last_k": "finetune_full", "head_only": "finetune_full",
             "bitfit": "finetune_full", "lora": "finetune_full",
             SAME_INIT_CONTROL: "control_pretrained_init"}
# Data-efficiency series compared at each label fraction: student vs the same-init control.
SERIES_REFERENCE = {"student": "control"}
SAMPLES = 2000


def primary_metric(rec: dict[str, Any]) -> str:
  """The task's primary metric a record was selected on (older records: their config's)."""
  return (rec.get("primary_metric") or ((rec.get("config") or {}).get("train") or {}).get(
      "best_metric") or "accuracy")


def _onehot(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
  """(pred N×C, labels N×C) booleans from a record's test predictions, or None without them."""
  test = (rec.get("metrics") or {}).get("test") or {}
  pred, labels = test.get("predictions"), test.get("labels")
  if pred is None or labels is None:
    return None
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.ndim == 2:  # multilabel: 0/1 per class
    return pred.astype(bool), labels.astype(bool)
  c = int(max(len((test.get("per_class") or {})), pred.max() + 1, labels.max() + 1))
  eye = np.eye(c, dtype=bool)
  return eye[pred], eye[labels]


def _counts(w_BxN: np.ndarray, p: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class tp/fp/fn and exact-match correct counts under example weights (B resamples)."""
  w = w_BxN.astype(np.float64)
  return {"tp": w @ (p & y), "fp": w @ (p & ~y), "fn": w @ (~p & y),
          "correct": w @ np.all(p == y, axis=1), "n": w.sum(1)}


def _metric(name: str, k: dict[str, np.ndarray]) -> np.ndarray:
  """research/metrics.py's accuracy or macro-F1 (classes with support or predictions) from counts."""
  if name == "accuracy":
    return k["correct"] / np.maximum(k["n"], 1)
  if name != "macro_f1":
    raise ValueError(f"paired tests: primary metric {name!r}; use accuracy or macro_f1.")
  denom = 2 * k["tp"] + k["fp"] + k["fn"]
  f1 = np.where(denom > 0, 2 * k["tp"] / np.maximum(denom, 1e-12), 0.0)
  present = denom > 0
  return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def _diff(name: str, w: np.ndarray, a, b) -> np.ndarray:
  return _metric(name, _counts(w, *a)) - _metric(name, _counts(w, *b))


def compare_seeds(name: str, pairs: Sequence[tuple[tuple, tuple]], *, samples: int = SAMPLES,
                  seed: int = 0) -> dict[str, Any]:
  """Paired statistics of row A against row B over seeds.

  Args:
    name: the primary metric ("accuracy" or "macro_f1").
    pairs: per seed ((pred_A, labels), (pred_B, labels)), N×C booleans on the same test examples.

  Returns:
    {"diff_mean", "diff_std", "n_seeds", "ci_low", "ci_high", "p_value", "verdict", "by_seed"}.
  """
  n = pairs[0][0][0].shape[0]
  for (pa, ya), (pb, yb) in pairs:
    if pa.shape != pb.shape or pa.shape[0] != n or not np.array_equal(ya, yb):
      raise ValueError("paired tests: the two rows were scored on different test examples; pair "
                       "runs of the same task and test split.")
  rng = np.random.default_rng(seed)
  ones = np.ones((1, n))
  w_boot = rng.multinomial(n, np.full(n, 1.0 / n), size=samples)
  by_seed, diffs, boot, null = [], [], np.zeros(samples), np.zeros(samples)
  for (pa, y), (pb, _) in pairs:
    d = float(_diff(name, ones, (pa, y), (pb, y))[0])
    resampled = _diff(name, w_boot, (pa, y), (pb, y))  # the same resamples for every seed
    ci = np.quantile(resampled, [0.025, 0.975])
    boot += resampled
    null += _swapped(name, rng, (pa, y), (pb, y), samples)
    mc = paired.mcnemar_exact(np.all(pa == y, 1), np.all(pb == y, 1))
    by_seed.append({"diff": d, "ci_low": float(ci[0]), "ci_high": float(ci[1]),
                    "mcnemar_p": mc["p_value"], "a_only": mc["a_only"], "b_only": mc["b_only"]})
    diffs.append(d)
  k = len(pairs)
  mean = float(np.mean(diffs))
  lo, hi = (float(x) for x in np.quantile(boot / k, [0.025, 0.975]))
  p = float((np.sum(np.abs(null / k) >= abs(mean) - 1e-12) + 1) / (samples + 1))
  signs = {np.sign(d) for d in diffs}
  verdict = paired.verdict(lo, hi)
  if verdict != "level" and signs != {1.0 if verdict == "beats" else -1.0}:
    verdict = "level"  # the seeds disagree on the sign: training noise decides
  return {"diff_mean": mean, "diff_std": float(np.std(diffs, ddof=1)) if k > 1 else 0.0,
          "n_seeds": k, "ci_low": lo, "ci_high": hi, "p_value": p, "verdict": verdict,
          "by_seed": by_seed}


def _swapped(name: str, rng, a, b, samples: int) -> np.ndarray:
  """Metric differences with each example's two predictions swapped at random (the null)."""
  (pa, y), (pb, _) = a, b
  n = pa.shape[0]
  s = rng.integers(0, 2, size=(samples, n)).astype(np.float64)  # 1: swap example i
  per_a = {"tp": pa & y, "fp": pa & ~y, "fn": ~pa & y, "correct": np.all(pa == y, 1)}
  per_b = {"tp": pb & y, "fp": pb & ~y, "fn": ~pb & y, "correct": np.all(pb == y, 1)}
  counts_a, counts_b = {"n": np.full(samples, n, np.float64)}, {"n": np.full(samples, n, np.float64)}
  for key in per_a:
    xa, xb = per_a[key].astype(np.float64), per_b[key].astype(np.float64)
    # A' takes B's prediction where swapped: sum(xa) + s @ (xb - xa); B' the other way round.
    counts_a[key] = xa.sum(0) + s @ (xb - xa)
    counts_b[key] = xb.sum(0) + s @ (xa - xb)
  return _metric(name, counts_a) - _metric(name, counts_b)


def _fraction(rec: dict[str, Any]) -> float:
  f = rec.get("label_fraction")
  if f is None:
    f = ((rec.get("config") or {}).get("data") or {}).get("label_fraction")
  return 1.0 if f is None else float(f)


def _reference(name: str, rec: dict[str, Any]) -> str | None:
  """The row `name` (a method, or a data-efficiency series) is read against, or None."""
  if name in SERIES_REFERENCE:
    return SERIES_REFERENCE[name]
  if name in REFERENCE:
    return REFERENCE[name]
  if rec.get("kind") != "distill" or rec.get("series"):
    return None
  # The control of the KD row's own initialisation: cut from the teacher, or the pretrained model.
  return SAME_INIT_CONTROL if init_of(rec) == "teacher_layers" else PRETRAINED_INIT_CONTROL


def init_of(rec: dict[str, Any]) -> str:
  """Where a record's trained weights started: "teacher_layers", "pretrained" or "random".

  Records before issue 15 have no `init` (their config says it), and some wrote "fresh" (a
  student built from config.model: pretrained or random as that says).
  """
  cfg = rec.get("config") or {}
  d, model = cfg.get("distill") or {}, cfg.get("model") or {}
  if rec.get("init") not in (None, "", "fresh"):
    return str(rec["init"])
  teacher = d.get("teacher") or d.get("teachers") or rec.get("kind") == "distill"
  if not rec.get("init") and teacher and d.get("student_init", "layers") == "layers":
    return "teacher_layers"
  return "random" if model.get("random_init") else "pretrained"


def paired_rows(records: Sequence[dict[str, Any]], *, samples: int = SAMPLES,
                series_of: Callable[[dict[str, Any]], str] | None = None
                ) -> dict[tuple, dict[str, Any]]:
  """{(domain, task, method or series, label_fraction): compare_seeds(...) + "vs"} for every row
  whose reference row has test predictions for at least one common seed.

  `series_of(rec)` names the data-efficiency series a full-label main run stands for (its
  100 % point), so a series at fraction 1 pairs with the main runs.
  """
  index: dict[tuple, dict[Any, dict]] = defaultdict(dict)
  for r in records:
    names = [r.get("series") or r["method"]]
    if series_of is not None and not r.get("series") and (s := series_of(r)):
      names.append(s)
    for name in names:
      index[(r["domain"], r["task"], name, _fraction(r))][r.get("seed")] = r
  out = {}
  for key, by_seed in index.items():
    domain, task, name, frac = key
    first = next(iter(by_seed.values()))
    ref = _reference(name, first)
    ref_runs = index.get((domain, task, ref, frac), {}) if ref else {}
    pairs = []
    for s in sorted(set(by_seed) & set(ref_runs), key=str):
      a, b = _onehot(by_seed[s]), _onehot(ref_runs[s])
      if a is not None and b is not None:
        pairs.append((a, b))
    if not pairs:
      continue
    stats = compare_seeds(primary_metric(first), pairs, samples=samples)
    out[key] = {"vs": ref, "metric": primary_metric(first), **stats}
  return out
