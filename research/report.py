"""Result records -> the comparison table (csv, markdown, LaTeX), a qualitative table, plots, summary.

One JSON record per run (schema in docs/ARCHITECTURE.md), found as `<results_dir>/cells/*.json` (the
grid's layout) or `<results_dir>/**/result.json`, each holding one record or a list. Full-label runs
outside the data-efficiency study are aggregated over seeds per (domain, task, method):
mean and sample standard deviation (ddof=1; 0 when n=1, and n is always shown). Retention and
speed-up are relative to the teacher row (`is_teacher`) of the same (domain, task). Every number
comes from the records; nothing is estimated here (GPU columns appear only if GPU records exist).

Usage: `python -m research.report <results_dir> [--out DIR]`, or `write_report(results_dir)`.
A results folder's `onnx.json` (experiments/export_onnx.py), when present, adds its ONNX Runtime
columns (`onnx_*`) to the rows it names.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from research import names
from research import significance

# Data-efficiency series names (record field "series"): the teacher fine-tuned on a fraction of the
# labels, a small control (student-sized) fine-tuned on the same fraction, and a student distilled
# from that teacher over all training inputs.
SERIES_TEACHER = "teacher"
SERIES_CONTROL = "control"      # the same-init control: cut from the series' teacher, labels only
SERIES_CONTROL_PRETRAINED = "control_pretrained"
SERIES_STUDENT = "student"
# With all labels each series is the main run of the same config (the grid runs it once).
MAIN_RUN_SERIES = {"finetune_full": SERIES_TEACHER, "control_teacher_init": SERIES_CONTROL,
                   "kd_soft": SERIES_STUDENT, "control_pretrained_init": SERIES_CONTROL_PRETRAINED}
LEGACY_METHODS = names.LEGACY_METHODS  # old method names, read as today's
SAME_INIT_CONTROL = significance.SAME_INIT_CONTROL  # what every KD row is read against

REQUIRED_COLUMNS = (
    "domain", "task", "method", "is_teacher", "n_seeds", "params_total", "params_trainable",
    "checkpoint_mb", "primary_metric", "primary_metric_mean", "primary_metric_std",
    "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std", "retention_vs_teacher",
    "cpu_latency_ms_p50", "cpu_throughput_eps", "speedup_vs_teacher",
    "train_flops", "train_seconds", "labeled_examples", "validation_labels", "unlabeled_examples",
    "init", "vs_control", "paired_diff_mean", "paired_diff_std", "paired_diff_ci_low",
    "paired_diff_ci_high", "paired_p_value", "paired_verdict", "paired_n_seeds")
EXTRA_COLUMNS = ("kind", "seeds", "cpu_device", "cpu_latency_ms_p90", "cpu_throughput_batch",
                 "train_flops_source", "teacher_flops", "model_layers", "model_width",
                 "cpu_latency_ms_spread", "cpu_latency_rounds")
# Rows of kind "baseline" (research/data/checks.py: majority class, TF-IDF + logistic regression)
# are reference points, never the fine-tuned or distilled model the qualitative table names.
BASELINE = "baseline"
NAN = float("nan")
# experiments/export_onnx.py's output in a results folder: "rows" {"<task>/<method>": {onnx_* seed
# means, "onnx_n_seeds"}} merged into the table rows, with "host_cpu", "settings", "versions".
ONNX_FILE = "onnx.json"


# ----------------------------------------------------------------------------------------------
# Loading and aggregation.


def load_records(results: str | os.PathLike[str] | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Reads result records.

  Args:
    results: a directory (`cells/*.json` and `baselines/*.json` in it (research/data/checks.py's
      baseline rows) and every `result.json` below it, each one record
      or a list of records), a `.json` file (record or list) or `.jsonl` file, or a list of dicts.

  Returns:
    list of record dicts, each checked for domain, task, method and its primary test metric. Fields
    missing at the top level are taken from the run config (`config.tags.{domain, task, method,
    series, is_teacher}`, `config.seed`, `config.data.label_fraction`).
  """
  if isinstance(results, (list, tuple)):
    records, sources = list(results), ["<list>"] * len(results)
  else:
    path = Path(results)
    if path.is_dir():
      files = sorted(set(path.glob("cells/*.json")) | set(path.glob("baselines/*.json"))
                     | set(path.rglob("result.json")))
      if not files:
        raise FileNotFoundError(f"load_records: no cells/*.json or result.json under {path}; point "
                                "at the results folder the experiment grid wrote.")
    elif path.is_file():
      files = [path]
    else:
      raise FileNotFoundError(f"load_records: {path} does not exist; pass a results folder or a "
                              "result JSON file.")
    records, sources = [], []
    for f in files:
      text = f.read_text()
      if f.suffix == ".jsonl":
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
      else:
        loaded = json.loads(text)
        items = loaded if isinstance(loaded, list) else [loaded]
      records += items
      sources += [str(f)] * len(items)
  records = [_with_tags(r) if isinstance(r, dict) else r for r in records]
  for rec, src in zip(records, sources):
    if not isinstance(rec, dict):
      raise ValueError(f"load_records: {src} holds a {type(rec).__name__}, expected a result record "
                       "(dict).")
    for key in ("domain", "task", "method"):
      if not rec.get(key):
        raise ValueError(f"load_records: record in {src} has no {key!r}; every result record needs "
                         "domain, task and method (docs/ARCHITECTURE.md).")
    primary = significance.primary_metric(rec)
    if _num(_get(rec, f"metrics.test.{primary}")) is None:
      raise ValueError(f"load_records: record in {src} ({rec['method']}) has no "
                       f"metrics.test.{primary} (its primary metric); write the test metrics into "
                       "the record.")
  _check_duplicates(records)
  return records


def _with_tags(rec: dict[str, Any]) -> dict[str, Any]:
  """Fills identifying fields missing at the top level from the run config's tags."""
  rec = dict(rec)
  for key in ("domain", "task", "method", "series", "is_teacher"):
    if rec.get(key) in (None, "") and _get(rec, f"config.tags.{key}") not in (None, ""):
      rec[key] = _get(rec, f"config.tags.{key}")
  if rec.get("method") in LEGACY_METHODS:
    if rec.get("series") == SERIES_CONTROL:  # the old series "control" was the pretrained init
      rec["series"] = SERIES_CONTROL_PRETRAINED
    rec["method"] = LEGACY_METHODS[rec["method"]]
  if rec.get("seed") is None and _get(rec, "config.seed") is not None:
    rec["seed"] = _get(rec, "config.seed")
  return rec


def _check_duplicates(records: Iterable[dict[str, Any]]) -> None:
  seen = set()
  for r in records:
    key = (r["domain"], r["task"], r["method"], r.get("series") or "", _label_fraction(r),
           r.get("seed"))
    if key in seen:
      raise ValueError(f"load_records: duplicate records for (domain, task, method, series, "
                       f"label_fraction, seed) = {key}; remove the duplicate run.")
    seen.add(key)


def _get(rec: dict[str, Any], dotted: str) -> Any:
  cur: Any = rec
  for part in dotted.split("."):
    if not isinstance(cur, dict) or part not in cur:
      return None
    cur = cur[part]
  return cur


def _num(x: Any) -> float | None:
  if isinstance(x, bool) or x is None:
    return None
  try:
    v = float(x)
  except (TypeError, ValueError):
    return None
  return None if math.isnan(v) else v


def _label_fraction(rec: dict[str, Any]) -> float:
  v = _num(rec.get("label_fraction"))
  if v is None:
    v = _num(_get(rec, "config.data.label_fraction"))
  return 1.0 if v is None else v


def _kind(rec: dict[str, Any]) -> str:
  kind = rec.get("kind")
  if kind:
    return str(kind)
  method = str(rec["method"])
  return "distill" if method.startswith("kd_") or "distill" in method else "finetune"


def latencies(rec: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """A record's latency benchmarks by backend ("cpu", "gpu", ...).

  `rec["latency"]` may be one `benchmark_latency` dict, a list of them, or a dict keyed by backend.
  A benchmark without "backend" is "cpu" if its device is "cpu", else "gpu".
  """
  lat = rec.get("latency")
  if not lat:
    return {}
  if isinstance(lat, dict) and "batch1_p50_ms" not in lat and all(
      isinstance(v, dict) for v in lat.values()):
    items = [dict(v, backend=v.get("backend", k)) for k, v in lat.items()]
  else:
    items = lat if isinstance(lat, list) else [lat]
  out = {}
  for item in items:
    backend = item.get("backend")
    if not backend:
      backend = "cpu" if str(item.get("device", "cpu")).lower() == "cpu" else "gpu"
    out[str(backend)] = item
  return out


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
  """Mean, sample std (ddof=1; 0 when n<2) and n over the numeric values (None/NaN skipped)."""
  xs = [v for v in (_num(x) for x in values) if v is not None]
  if not xs:
    return NAN, NAN, 0
  a = np.asarray(xs, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) >= 2 else 0.0, len(a)


def _ratio(a: Any, b: Any) -> float:
  a, b = _num(a), _num(b)
  return NAN if a is None or not b else a / b


def _mean(values: Iterable[Any]) -> float:
  return mean_std(values)[0]


# research.cost.SOURCE_XLA / SOURCE_ANALYTIC, spelled here so the report stays free of jax.
XLA_SOURCE, ANALYTIC_SOURCE = "xla_cost_analysis", "analytic"


def _train_flops(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Mean training FLOPs of a row's seeds, all from one source.

  XLA's count when every seed has it; otherwise the analytic count, which every record keeps
  (`train_flops_analytic`; older records have only `train_flops` with source "analytic").
  """
  sources = {r.get("train_flops_source") for r in rs}
  if sources == {XLA_SOURCE}:
    return {"train_flops": _mean(r.get("train_flops") for r in rs),
            "train_flops_source": XLA_SOURCE}
  analytic = [r.get("train_flops_analytic", r.get("train_flops")
                    if r.get("train_flops_source") == ANALYTIC_SOURCE else None) for r in rs]
  return {"train_flops": _mean(analytic), "train_flops_source": ANALYTIC_SOURCE}


def load_onnx(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
  """`<folder>/onnx.json` (experiments/export_onnx.py), or None when there is none."""
  path = Path(folder) / ONNX_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def aggregate(records: Sequence[dict[str, Any]],
              onnx: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """Aggregates the main runs over seeds per (domain, task, method).

  Main runs have label_fraction 1 and no `series`; data-efficiency runs (with `series`) are separate
  runs, summarised by `data_efficiency` and `kd_vs_control` instead.

  Args:
    records: result records (see `load_records`).
    onnx: an onnx.json document (`load_onnx`); its "rows" entry "<task>/<method>" (onnx_* fields)
      is added to that row as is.

  Returns:
    table rows (dicts with REQUIRED_COLUMNS, EXTRA_COLUMNS and `<backend>_device`,
    `<backend>_latency_ms_p50`, `<backend>_throughput_eps` for each non-CPU backend measured),
    sorted by domain, task, teacher first, then method. Missing values are NaN.
  """
  groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
  for r in records:
    if _label_fraction(r) >= 1.0 and not r.get("series"):
      groups[(r["domain"], r["task"], r["method"])].append(r)
  accel = sorted({b for rs in groups.values() for r in rs for b in latencies(r) if b != "cpu"})
  paired = significance.paired_rows([r for rs in groups.values() for r in rs])
  rows = []
  for (domain, task, method), rs in groups.items():
    sizes = {_num(r.get("params_total")) for r in rs} - {None}
    if len(sizes) > 1:
      raise ValueError(f"aggregate: method {method!r} in {domain}/{task} has runs with different "
                       f"params_total {sorted(sizes)}; give each model its own method name.")
    primary = significance.primary_metric(rs[0])
    acc, acc_std, n = mean_std(_get(r, "metrics.test.accuracy") for r in rs)
    prim, prim_std, _ = mean_std(_get(r, f"metrics.test.{primary}") for r in rs)
    f1, f1_std, _ = mean_std(_get(r, "metrics.test.macro_f1") for r in rs)
    cpu = [latencies(r).get("cpu", {}) for r in rs]
    row: dict[str, Any] = {
        "domain": domain, "task": task, "method": method, "kind": _kind(rs[0]),
        "is_teacher": any(bool(r.get("is_teacher")) for r in rs), "n_seeds": n,
        "seeds": " ".join(str(r.get("seed")) for r in rs if r.get("seed") is not None),
        "params_total": _mean(r.get("params_total") for r in rs),
        "params_trainable": _mean(r.get("params_trainable") for r in rs),
        "checkpoint_mb": _mean(r.get("checkpoint_bytes") for r in rs) / 1e6,
        "primary_metric": primary, "primary_metric_mean": prim, "primary_metric_std": prim_std,
        "accuracy_mean": acc, "accuracy_std": acc_std, "macro_f1_mean": f1, "macro_f1_std": f1_std,
        "retention_vs_teacher": NAN,
        "cpu_latency_ms_p50": _mean(c.get("batch1_p50_ms") for c in cpu),
        "cpu_latency_ms_p90": _mean(c.get("batch1_p90_ms") for c in cpu),
        "cpu_throughput_eps": _mean(c.get("throughput_eps") for c in cpu),
        "cpu_throughput_batch": _mean(c.get("throughput_batch_size") for c in cpu),
        "cpu_latency_ms_spread": _mean(c.get("batch1_spread_ms") for c in cpu),
        "cpu_latency_rounds": _mean(c.get("rounds") for c in cpu),
        "model_layers": _mean(_get(r, "model.num_layers") for r in rs),
        "model_width": _width(rs[0]),
        "cpu_device": ", ".join(sorted({str(c.get("host_cpu") or c["device"]) for c in cpu
                                        if c.get("host_cpu") or c.get("device")})),
        "speedup_vs_teacher": NAN,
        **_train_flops(rs),
        "teacher_flops": _mean(r.get("teacher_flops") for r in rs),
        "train_seconds": _mean(r.get("train_seconds") for r in rs),
        "labeled_examples": _mean(r.get("labeled_examples") for r in rs),
        "validation_labels": _mean(r.get("validation_labels") for r in rs),
        "unlabeled_examples": _mean(r.get("unlabeled_examples") for r in rs),
        "init": _init(rs[0]),
        **_paired_fields(paired.get((domain, task, method, 1.0))),
    }
    for b in accel:
      lat = [latencies(r).get(b, {}) for r in rs]
      row[f"{b}_device"] = ", ".join(sorted({str(x["device"]) for x in lat if x.get("device")}))
      row[f"{b}_latency_ms_p50"] = _mean(x.get("batch1_p50_ms") for x in lat)
      row[f"{b}_throughput_eps"] = _mean(x.get("throughput_eps") for x in lat)
    row.update(((onnx or {}).get("rows") or {}).get(f"{task}/{method}", {}))
    rows.append(row)
  for row in rows:
    teacher = teacher_row(rows, row["domain"], row["task"])
    if teacher is None:
      continue
    row["retention_vs_teacher"] = _ratio(row["primary_metric_mean"], teacher["primary_metric_mean"])
    row["speedup_vs_teacher"] = _ratio(teacher["cpu_latency_ms_p50"], row["cpu_latency_ms_p50"])
  rows.sort(key=lambda r: (r["domain"], r["task"], not r["is_teacher"], r["method"]))
  return rows


def _init(rec: dict[str, Any]) -> str:
  """Where a row's weights started ("" for a baseline, which has none)."""
  if not rec.get("init") and _kind(rec) == BASELINE:
    return ""
  return significance.init_of(rec)


def _paired_fields(stats: dict[str, Any] | None) -> dict[str, Any]:
  """The paired columns of a row (research/significance.py); NaN / "" without a paired test."""
  if not stats:
    return {"vs_control": "", "paired_diff_mean": NAN, "paired_diff_std": NAN,
            "paired_diff_ci_low": NAN, "paired_diff_ci_high": NAN, "paired_p_value": NAN,
            "paired_verdict": "", "paired_n_seeds": 0}
  return {"vs_control": stats["vs"], "paired_diff_mean": stats["diff_mean"],
          "paired_diff_std": stats["diff_std"], "paired_diff_ci_low": stats["ci_low"],
          "paired_diff_ci_high": stats["ci_high"], "paired_p_value": stats["p_value"],
          "paired_verdict": stats["verdict"], "paired_n_seeds": stats["n_seeds"]}


def _width(rec: dict[str, Any]) -> str:
  """What besides depth fixes a layer's cost: hidden, heads, FFN size ("" without a model)."""
  m = rec.get("model") or {}
  parts = [m.get(k) for k in ("hidden_size", "num_heads", "intermediate_size")]
  return "D{}-H{}-F{}".format(*parts) if None not in parts else ""


def latency_sanity(rows: Sequence[dict[str, Any]], backend: str = "cpu") -> list[dict[str, Any]]:
  """Pairs of shapes of one table where fewer layers of the same width time slower.

  Returns:
    [{"domain", "task", "fewer", "more" (layer counts), "fewer_ms", "more_ms", "spread_ms" (the
    larger IQR of the two shapes' round medians; NaN when not recorded)}].
  """
  col = f"{backend}_latency_ms_p50"
  out = []
  for domain, task in _tasks(rows):
    shapes: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
      if (r["domain"], r["task"]) == (domain, task) and _ok(r.get(col)) and r.get("model_width") \
          and _ok(r.get("model_layers")):
        shapes.setdefault((r["model_width"], r["model_layers"]), r)
    for (wa, la), a in shapes.items():
      for (wb, lb), b in shapes.items():
        if wa == wb and la < lb and a[col] > b[col]:
          spread = max(_num(a.get(f"{backend}_latency_ms_spread")) or NAN,
                       _num(b.get(f"{backend}_latency_ms_spread")) or NAN)
          out.append({"domain": domain, "task": task, "fewer": int(la), "more": int(lb),
                      "fewer_ms": a[col], "more_ms": b[col], "spread_ms": spread})
  return out


def _latency_note(rs: Sequence[dict[str, Any]]) -> str:
  """How the table's CPU latency was measured, and whether the depth sanity check holds."""
  timed = [r for r in rs if _ok(r["cpu_latency_ms_p50"])]
  if not timed:
    return ""
  rounds = {int(r["cpu_latency_rounds"]) for r in timed if _ok(r.get("cpu_latency_rounds"))}
  spreads = [r["cpu_latency_ms_spread"] / r["cpu_latency_ms_p50"] for r in timed
             if _ok(r.get("cpu_latency_ms_spread"))]
  how = (f"CPU latency: one benchmark pass, {'/'.join(map(str, sorted(rounds)))} interleaved "
         f"rounds; spread (IQR) of the round medians up to {100 * max(spreads):.0f}% of p50."
         if rounds and spreads else "CPU latency: timed per shape (no interleaved rounds recorded).")
  bad = latency_sanity(timed)
  if not bad:
    return how + " Sanity check (fewer layers of the same width is not slower): holds."
  why = "; ".join(
      f"{b['fewer']} layers {fmt_num(b['fewer_ms'])} ms > {b['more']} layers "
      f"{fmt_num(b['more_ms'])} ms" + (", within the spread of the round medians (timing noise)"
                                       if _ok(b["spread_ms"]) and b["fewer_ms"] - b["more_ms"]
                                       <= b["spread_ms"] else "")
      for b in bad)
  return how + f" Sanity check (fewer layers of the same width is not slower) does NOT hold: {why}."


def teacher_row(rows: Sequence[dict[str, Any]], domain: str, task: str) -> dict[str, Any] | None:
  """The reference teacher of a task: its `is_teacher` row (the most accurate one if several)."""
  teachers = [r for r in rows if r["domain"] == domain and r["task"] == task and r["is_teacher"]]
  return max(teachers, key=lambda r: r["primary_metric_mean"]) if teachers else None


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
  """CSV columns: the required ones, the extras, then per-accelerator latency columns if any."""
  accel = sorted({k for r in rows for k in r} - set(REQUIRED_COLUMNS) - set(EXTRA_COLUMNS))
  return list(REQUIRED_COLUMNS) + list(EXTRA_COLUMNS) + accel


# ----------------------------------------------------------------------------------------------
# Data efficiency: teacher / control / student at each label fraction.


def data_efficiency(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Test accuracy per (domain, task, series, method, label_fraction) over seeds.

  Returns:
    rows with domain, task, series, method, label_fraction, n, metric (the task's primary one),
    metric_mean, metric_std, labels_with_validation (train + validation labels read) and
    `by_seed` ({seed: metric}), from records that carry a `series`; for tasks with a series, the
    main full-label runs of MAIN_RUN_SERIES methods are its 100% points unless the series has its own.
  """
  groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
  for r in records:
    if r.get("series"):
      groups[(r["domain"], r["task"], r["series"], r["method"], _label_fraction(r))].append(r)
  studied = {(d, t) for d, t, *_ in groups}
  own_full = {(d, t, s) for d, t, s, _, f in groups if f >= 1.0}
  for r in records:
    series = MAIN_RUN_SERIES.get(r.get("method"))
    key = (r.get("domain"), r.get("task"))
    if (series and not r.get("series") and _label_fraction(r) >= 1.0 and key in studied
        and (*key, series) not in own_full):
      groups[(*key, series, r["method"], 1.0)].append(r)
  out = []
  for (domain, task, series, method, frac), rs in sorted(groups.items(), key=lambda kv: kv[0]):
    metric = significance.primary_metric(rs[0])
    m, s, n = mean_std(_get(r, f"metrics.test.{metric}") for r in rs)
    labels = _mean((_num(r.get("labeled_examples")) or 0) + (_num(r.get("validation_labels")) or 0)
                   for r in rs)
    out.append({"domain": domain, "task": task, "series": series, "method": method,
                "label_fraction": frac, "n": n, "metric": metric, "metric_mean": m,
                "metric_std": s, "labels_with_validation": labels,
                "by_seed": {r.get("seed"): float(_get(r, f"metrics.test.{metric}")) for r in rs}})
  return out


def kd_vs_control(records: Sequence[dict[str, Any]], *, student: str = SERIES_STUDENT,
                  control: str = SERIES_CONTROL) -> list[dict[str, Any]]:
  """Student minus control test accuracy at each label fraction.

  Seeds present in both are paired (difference per seed, then mean ± sample std); with no common
  seed the difference of means is reported with std sqrt(s_student² + s_control²).

  Returns:
    rows with domain, task, label_fraction, student_method, control_method, diff_mean, diff_std,
    n, paired (bool).
  """
  cells = data_efficiency(records)
  out = []
  for s in (c for c in cells if c["series"] == student):
    for c in cells:
      if (c["series"], c["domain"], c["task"]) != (control, s["domain"], s["task"]) or not \
          math.isclose(c["label_fraction"], s["label_fraction"]):
        continue
      common = sorted(set(s["by_seed"]) & set(c["by_seed"]), key=str)
      if common:
        m, sd, n = mean_std(s["by_seed"][k] - c["by_seed"][k] for k in common)
      else:
        m = s["metric_mean"] - c["metric_mean"]
        sd, n = math.hypot(s["metric_std"], c["metric_std"]), min(s["n"], c["n"])
      out.append({"domain": s["domain"], "task": s["task"], "label_fraction": s["label_fraction"],
                  "student_method": s["method"], "control_method": c["method"],
                  "metric": s["metric"], "diff_mean": m,
                  "diff_std": sd, "n": n, "paired": bool(common)})
  return out


# ----------------------------------------------------------------------------------------------
# Formatting.


def _ok(x: Any) -> bool:
  return _num(x) is not None


def fmt_count(n: Any) -> str:
  if not _ok(n):
    return "–"
  n = float(n)
  for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= div:
      return f"{n / div:.3g}{unit}"
  return f"{n:.0f}"


def fmt_flops(f: Any) -> str:
  if not _ok(f):
    return "–"
  f = float(f)
  for unit, div in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9),
                    ("MFLOP", 1e6)):
    if abs(f) >= div:
      return f"{f / div:.3g} {unit}"
  return f"{f:.3g} FLOP"


def fmt_seconds(s: Any) -> str:
  if not _ok(s):
    return "–"
  s = float(s)
  if s < 120:
    return f"{s:.3g} s"
  if s < 7200:
    return f"{s / 60:.3g} min"
  return f"{s / 3600:.3g} h"


def fmt_num(x: Any, digits: int = 3) -> str:
  if not _ok(x):
    return "–"
  return f"{float(x):.0f}" if abs(float(x)) >= 10 ** digits else f"{float(x):.{digits}g}"


def fmt_pm(mean: Any, std: Any, n: int, digits: int = 3, pm: str = "±") -> str:
  """"0.950 ± 0.010" (n >= 2) or "0.950 (n=1)"; "–" when missing."""
  if not _ok(mean):
    return "–"
  if n >= 2:
    return f"{float(mean):.{digits}f} {pm} {float(std):.{digits}f}"
  return f"{float(mean):.{digits}f} (n={n})"


def _fmt_ratio(x: Any, suffix: str = "×") -> str:
  return f"{float(x):.2f}{suffix}" if _ok(x) else "–"


def _fmt_pct(x: Any) -> str:
  return f"{100 * float(x):.1f}%" if _ok(x) else "–"


def _csv_value(v: Any) -> Any:
  if isinstance(v, bool):
    return str(v).lower()
  if isinstance(v, float):
    if math.isnan(v):
      return ""
    return int(v) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"
  return v


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
  """Writes the table rows as CSV (missing values empty, booleans true/false)."""
  cols = columns(rows)
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    for r in rows:
      w.writerow({c: _csv_value(r.get(c, NAN)) for c in cols})


def _accel_backends(rows: Sequence[dict[str, Any]]) -> list[str]:
  return sorted({k[:-len("_latency_ms_p50")] for r in rows for k in r
                 if k.endswith("_latency_ms_p50") and not k.startswith("cpu")})


def _tasks(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
  return sorted({(r["domain"], r["task"]) for r in rows})


def _md_cell(s: Any) -> str:
  return str(s).replace("|", "\\|")


LEGEND = """\
- **Accuracy, Macro-F1**: test split, mean ± sample standard deviation over seeds (ddof=1); a
  single seed is shown as "(n=1)". ★ marks the task's primary metric: checkpoints are chosen on
  it (validation), and retention, "best" and the paired tests read it. **n**: number of seeds.
- **Teacher**: the row marked † is the task's reference teacher; **Retention** = primary metric /
  the teacher's; **Speed-up** = teacher CPU batch-1 median latency / this row's.
- **Init**: where the trained weights started. "teacher layers": cut from the fine-tuned teacher,
  whose weights already saw the training labels (so a KD row with 0 labels still inherited them).
- **vs reference (paired)**: a KD row against the control of its own init, trained on ground truth
  only with the same epochs — `control_teacher_init` for students cut from the teacher,
  `control_pretrained_init` for students from the pretrained model (a cross-family teacher): the
  teacher's targets are the one difference; `control_teacher_init` against
  `control_pretrained_init` (what starting from the teacher's layers alone gives); last-k,
  head-only, BitFit and LoRA against `finetune_full`. Per seed the same test examples are paired; shown: mean
  ± std over seeds of the difference in the primary metric (points), and the verdict: "beats" /
  "below" when the 95% paired-bootstrap interval of the seed-mean difference excludes 0 and every
  seed agrees in sign, else "level"; p: approximate randomisation test (research/significance.py;
  table.csv has the interval).
- **Params**: total (trainable in parentheses). **Ckpt MB**: saved checkpoint size on disk
  (10⁶ bytes).
- **CPU p50 ms**: median latency of one jitted forward at batch 1, after warm-up, synchronised;
  **ex/s**: throughput at the largest benchmarked batch. Measured on the device named below; all
  shapes of a table in one pass, interleaved over rounds (p50 = median of the round medians; the
  note under each table gives the rounds and the spread).
- **GPU p50 ms, GPU ex/s** (when measured): the same benchmark on the accelerator named below
  the table, possibly on another machine than training (`experiments/bench_latency.py`).
- **Train FLOPs**: FLOPs of the training run as recorded (XLA cost analysis unless marked
  "analytic"); for distillation they include the teacher's forward passes, which table.csv
  also gives alone (`teacher_flops`). **Train time**: wall-clock training time on a shared
  machine; compare rows by FLOPs, not minutes.
- **Labeled + val / unlabeled**: training examples used with labels, plus the validation labels
  read to choose the checkpoint, and training examples used without labels.
- **Kind baseline** (when present): the majority class of train, and TF-IDF + logistic regression
  (its L2 picked on validation); no latency is timed for them.
- The table uses the main full-label runs; the data-efficiency runs (teacher / control /
  student at each fraction of labels) appear in data_efficiency.png and the summary.
"""


# The ONNX Runtime columns (header, row key, format), shown when a row has onnx_f32_p50_ms.
ONNX_COLUMNS = (("ORT f32 p50 ms", "onnx_f32_p50_ms", "num"),
                ("ORT int8 p50 ms", "onnx_int8_p50_ms", "num"),
                ("int8 ex/s", "onnx_int8_eps", "num"), ("int8 MB", "onnx_int8_mb", "num"),
                ("int8 acc", "onnx_int8_acc", "acc"))


def _has_onnx(rows: Sequence[dict[str, Any]]) -> bool:
  return any(_ok(r.get("onnx_f32_p50_ms")) for r in rows)


def _onnx_note(rs: Sequence[dict[str, Any]], onnx: dict[str, Any] | None) -> str:
  """Where and how the ORT columns were measured, from onnx.json's host_cpu/settings/versions."""
  doc = onnx or {}
  st, ver = doc.get("settings") or {}, doc.get("versions") or {}
  tools = ", ".join(f"{k} {ver[k]}" for k in ("jax2onnx", "onnxruntime") if ver.get(k))
  seeds = sorted({int(r["onnx_n_seeds"]) for r in rs if _ok(r.get("onnx_n_seeds"))})
  how = ", ".join(x for x in (
      f"batch-1 p50 at width {st['seq_len']}" if st.get("seq_len") else "",
      f"ex/s at batch {st['throughput_batch']}" if st.get("throughput_batch") else "",
      f"median of {st['rounds']} rounds interleaved with the JAX forward" if st.get("rounds")
      else "") if x)
  n = "/".join(map(str, seeds))
  return ("ORT columns: the same best params exported to ONNX" + (f" ({tools})" if tools else "")
          + f" and run in ONNX Runtime on CPU ({doc.get('host_cpu') or 'host not recorded'}), f32 "
          "and dynamic int8" + (f"; {how}" if how else "") + "; int8 acc: test accuracy of the "
          "int8 model" + (f", mean over {n} seed(s)" if seeds else "")
          + f" ({ONNX_FILE}, `python -m experiments.export_onnx`).")


INIT_NAMES = {"teacher_layers": "teacher layers", "pretrained": "pretrained", "random": "random"}


def _fmt_labels(r: dict[str, Any]) -> str:
  val = f" + {fmt_count(r['validation_labels'])}" if _ok(r.get("validation_labels")) else ""
  return f"{fmt_count(r['labeled_examples'])}{val} / {fmt_count(r['unlabeled_examples'])}"


def _fmt_pts(mean: float, std: float, n: int) -> str:
  """A paired difference in points: "+1.2 ± 0.4 pts" (no spread for one seed)."""
  return f"{100 * mean:+.1f}" + (f" ± {100 * std:.1f}" if n > 1 else "") + " pts"


def _fmt_test(st: dict[str, Any]) -> str:
  """A research/significance.py result: "**level**, +0.1 ± 0.7 pts over 3 seed(s), 95% CI [...]"."""
  return (f"**{st['verdict']}**, {_fmt_pts(st['diff_mean'], st['diff_std'], st['n_seeds'])} over "
          f"{st['n_seeds']} seed(s), 95% CI [{100 * st['ci_low']:+.1f}, "
          f"{100 * st['ci_high']:+.1f}], p = {st['p_value']:.2g}")


def _row_test(r: dict[str, Any]) -> dict[str, Any]:
  """A table row's paired columns as a significance result."""
  return {k: r[f"paired_{k}"] for k in ("verdict", "n_seeds", "p_value")} | {
      "diff_mean": r["paired_diff_mean"], "diff_std": r["paired_diff_std"],
      "ci_low": r["paired_diff_ci_low"], "ci_high": r["paired_diff_ci_high"]}


def _fmt_paired(r: dict[str, Any]) -> str:
  """"+1.2 ± 0.4 vs control_teacher_init: beats (p 0.003)" or "–"."""
  if not r.get("vs_control"):
    return "–"
  return (f"{_fmt_pts(r['paired_diff_mean'], r['paired_diff_std'], r['paired_n_seeds'])} vs "
          f"{r['vs_control']}: **{r['paired_verdict']}** (p {r['paired_p_value']:.2g})")


def table_markdown(rows: Sequence[dict[str, Any]], summary_text: str = "",
                   onnx: dict[str, Any] | None = None) -> str:
  """The readable table: one section per (domain, task), mean ± std, a legend. A section with a
  row that has onnx_f32_p50_ms gets the ONNX Runtime columns and a note from `onnx` (onnx.json)."""
  accel = _accel_backends(rows)
  first = ["Method", "Kind", "Init", "Params (trainable)", "Ckpt MB", "Accuracy", "Macro-F1",
           "Retention", "CPU p50 ms", "CPU ex/s", "Speed-up"]
  first += [h for b in accel for h in (f"{b.upper()} p50 ms", f"{b.upper()} ex/s")]
  last = ["Train FLOPs", "Train time", "Labeled + val / unlabeled", "vs reference (paired)", "n"]
  lines = ["# Fine-tune or distill? Comparison table", ""]
  if summary_text:
    lines += [summary_text.strip(), ""]
  for domain, task in _tasks(rows):
    rs = [r for r in rows if (r["domain"], r["task"]) == (domain, task)]
    ort = ONNX_COLUMNS if _has_onnx(rs) else ()
    primary = {"accuracy": "Accuracy", "macro_f1": "Macro-F1"}.get(rs[0]["primary_metric"])
    head = [f"{h} ★" if h == primary else h for h in first] + [h for h, _, _ in ort] + last
    lines += [f"## {domain} / {task}", "", "| " + " | ".join(head) + " |",
              "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for r in rs:
      src = (" (analytic)" if ANALYTIC_SOURCE in r.get("train_flops_source", "")
             and _ok(r["train_flops"]) else "")
      cells = [f"**{r['method']}** †" if r["is_teacher"] else r["method"], r["kind"],
               INIT_NAMES.get(r["init"], r["init"]) or "–",
               f"{fmt_count(r['params_total'])} ({fmt_count(r['params_trainable'])})",
               fmt_num(r["checkpoint_mb"]),
               fmt_pm(r["accuracy_mean"], r["accuracy_std"], r["n_seeds"]),
               fmt_pm(r["macro_f1_mean"], r["macro_f1_std"], r["n_seeds"]),
               _fmt_pct(r["retention_vs_teacher"]), fmt_num(r["cpu_latency_ms_p50"]),
               fmt_num(r["cpu_throughput_eps"]), _fmt_ratio(r["speedup_vs_teacher"])]
      for b in accel:
        cells += [fmt_num(r.get(f"{b}_latency_ms_p50")), fmt_num(r.get(f"{b}_throughput_eps"))]
      cells += [(f"{float(r[k]):.3f}" if how == "acc" and _ok(r.get(k)) else fmt_num(r.get(k)))
                for _, k, how in ort]
      cells += [fmt_flops(r["train_flops"]) + src, fmt_seconds(r["train_seconds"]),
                _fmt_labels(r), _fmt_paired(r), str(r["n_seeds"])]
      lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    devices = sorted({r["cpu_device"] for r in rs if r["cpu_device"]})
    lines += ["", f"CPU: {', '.join(devices) or 'not measured'}."]
    for b in accel:
      devs = sorted({r.get(f"{b}_device") for r in rs if r.get(f"{b}_device")})
      lines[-1] += f" {b.upper()}: {', '.join(devs) or 'not measured'}."
    if note := _latency_note(rs):
      lines += ["", note]
    if ort:
      lines += ["", _onnx_note(rs, onnx)]
    lines.append("")
  lines += ["## Legend", "", LEGEND]
  return "\n".join(lines)


def _tex(s: Any) -> str:
  """Escapes LaTeX specials in a cell."""
  out = str(s).replace("\\", "\0")
  for a in "&%$#_{}":
    out = out.replace(a, "\\" + a)
  out = out.replace("~", r"\~{}").replace("^", r"\^{}").replace("\0", r"\textbackslash{}")
  return out.replace("×", r"$\times$").replace("–", "--")


def table_latex(rows: Sequence[dict[str, Any]]) -> str:
  """A booktabs table (needs \\usepackage{booktabs}); teacher rows marked with a dagger."""
  head = ["Domain", "Task", "Method", "Params", "Acc.", "Macro-F1", "Ret.", "CPU ms", "Speed-up",
          "Train FLOPs", "$n$"]
  lines = [r"% Requires \usepackage{booktabs}. Generated by research.report.",
           r"\begin{table}[t]", r"\centering", r"\small",
           r"\begin{tabular}{lll" + "r" * (len(head) - 3) + "}", r"\toprule",
           " & ".join(head) + r" \\", r"\midrule"]
  for i, (domain, task) in enumerate(_tasks(rows)):
    if i:
      lines.append(r"\midrule")
    for r in (r for r in rows if (r["domain"], r["task"]) == (domain, task)):
      method = _tex(r["method"]) + (r"$^\dagger$" if r["is_teacher"] else "")
      cells = [_tex(domain), _tex(task), method, _tex(fmt_count(r["params_total"])),
               _tex(fmt_pm(r["accuracy_mean"], r["accuracy_std"], r["n_seeds"], pm="@PM@")),
               _tex(fmt_pm(r["macro_f1_mean"], r["macro_f1_std"], r["n_seeds"], pm="@PM@")),
               _tex(_fmt_pct(r["retention_vs_teacher"])), _tex(fmt_num(r["cpu_latency_ms_p50"])),
               _tex(_fmt_ratio(r["speedup_vs_teacher"])), _tex(fmt_flops(r["train_flops"])),
               str(r["n_seeds"])]
      lines.append(" & ".join(c.replace("@PM@", r"$\pm$") for c in cells) + r" \\")
  lines += [r"\bottomrule", r"\end{tabular}",
            r"\caption{Test accuracy and macro-F1 (mean $\pm$ sample std over $n$ seeds), retention "
            r"and CPU batch-1 speed-up relative to the teacher ($^\dagger$), parameters and "
            r"training FLOPs.}", r"\label{tab:compare}", r"\end{table}", ""]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Qualitative table and summary.


def _best(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
  rows = [r for r in rows if _ok(r["primary_metric_mean"])]
  if not rows:
    return None
  return max(rows, key=lambda r: (r["primary_metric_mean"], -(_num(r["params_total"]) or 0)))


RETENTION_BAR = 0.97  # "keeps the teacher's quality": the summary names the fastest student above it


def _fastest_within(rows: Iterable[dict[str, Any]], bar: float) -> dict[str, Any] | None:
  """The distilled row with the largest CPU speed-up among those retaining >= bar of the teacher."""
  ok = [r for r in rows if r["kind"] == "distill" and _ok(r["speedup_vs_teacher"])
        and _ok(r["retention_vs_teacher"]) and r["retention_vs_teacher"] >= bar]
  return max(ok, key=lambda r: r["speedup_vs_teacher"]) if ok else None


def _kd_regimes(diffs: Sequence[dict[str, Any]]) -> str:
  """Plain words for student-vs-control differences of one task."""
  if not diffs:
    return ""
  def pts(d: dict[str, Any]) -> str:
    if d["n"] < 2:  # one seed: no spread to report
      return (f"{_fmt_frac(d['label_fraction'])}: {100 * d['diff_mean']:+.1f} pts (n=1, one seed; "
              "no spread)")
    noise = "" if d["diff_mean"] - d["diff_std"] > 0 or d["diff_mean"] + d["diff_std"] < 0 \
        else ", within one std"
    return (f"{_fmt_frac(d['label_fraction'])}: {100 * d['diff_mean']:+.1f} ± "
            f"{100 * d['diff_std']:.1f} pts (n={d['n']}{'' if d['paired'] else ', unpaired'}"
            f"{noise})")
  wins = [d for d in diffs if d["diff_mean"] > 0]
  losses = [d for d in diffs if d["diff_mean"] <= 0]
  parts = []
  if wins:
    parts.append("beats the control at " + "; ".join(pts(d) for d in wins))
  if losses:
    parts.append("does not at " + "; ".join(pts(d) for d in losses))
  return " and ".join(parts)


def _fmt_frac(f: float) -> str:
  return f"{100 * f:g}% labels"


def _latency_phrase(r: dict[str, Any], accel: Sequence[str]) -> str:
  if not _ok(r["cpu_latency_ms_p50"]):
    return "not benchmarked on CPU"
  s = (f"{fmt_num(r['cpu_latency_ms_p50'])} ms at batch 1, {fmt_num(r['cpu_throughput_eps'])} ex/s "
       f"at batch {fmt_num(r['cpu_throughput_batch'])} on CPU ({r['cpu_device'] or '?'})")
  for b in accel:
    if _ok(r.get(f"{b}_latency_ms_p50")):
      s += (f"; {fmt_num(r[f'{b}_latency_ms_p50'])} ms, {fmt_num(r[f'{b}_throughput_eps'])} ex/s "
            f"on {b.upper()} ({r[f'{b}_device']})")
  return s


def _q_quality(r: dict[str, Any]) -> str:
  s = (f"{r['method']} {fmt_pm(r['primary_metric_mean'], r['primary_metric_std'], r['n_seeds'])} "
       f"{_metric_name(r)}")
  if not r["is_teacher"] and _ok(r["retention_vs_teacher"]):
    s += f" ({_fmt_pct(r['retention_vs_teacher'])} of teacher)"
  return s


def _metric_name(r: dict[str, Any]) -> str:
  return {"accuracy": "accuracy", "macro_f1": "macro-F1"}.get(r["primary_metric"],
                                                             r["primary_metric"])


def _q_params(r: dict[str, Any]) -> str:
  return f"{fmt_count(r['params_total'])} params, {fmt_count(r['params_trainable'])} trained"


def _q_data(r: dict[str, Any]) -> str:
  return (f"{r['method']}: {fmt_count(r['labeled_examples'])} labeled + "
          f"{fmt_count(r['unlabeled_examples'])} unlabeled examples")


def _q_cost(r: dict[str, Any]) -> str:
  return f"{r['method']}: {fmt_flops(r['train_flops'])} / {fmt_seconds(r['train_seconds'])}"


def qualitative_markdown(rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> str:
  """The fine-tuning vs distillation table, each row backed by the measured evidence per task."""
  accel = _accel_backends(rows)
  diffs = kd_vs_control(records)
  lines = ["# Fine-tuning vs distillation: what the measurements say", "",
           "Each cell: the general claim, then the evidence measured in this run (mean ± sample std "
           "over seeds). FT = the teacher (or best fine-tuned model); KD = the best distilled "
           "student.", ""]
  for domain, task in _tasks(rows):
    rs = [r for r in rows if (r["domain"], r["task"]) == (domain, task)]
    teacher = teacher_row(rows, domain, task)
    ft_rows = [r for r in rs if r["kind"] not in ("distill", BASELINE)]
    kd_rows = [r for r in rs if r["kind"] == "distill"]
    ft = teacher if teacher is not None and teacher["kind"] != "distill" else _best(ft_rows)
    kd = _best(kd_rows)
    table = {
        "Main goal": (
            "Adapt a pretrained model to the domain task; size unchanged.",
            "Compress a fine-tuned teacher into a smaller, faster student.",
            (f"{ft['method']}: {_q_params(ft)}" if ft else ""),
            (f"{kd['method']}: {_q_params(kd)}" + (
                f" ({_fmt_pct(_ratio(kd['params_total'], teacher['params_total']))} of the teacher's)"
                if teacher and _ok(kd["params_total"]) and _ok(teacher["params_total"]) else "")
             if kd else "")),
        "Best suited for": (
            "Best quality when labels are plentiful and model size is acceptable.",
            "Deployment under latency/memory budgets; few labels but unlabeled text.",
            (f"most accurate fine-tuned: {_q_quality(_best(ft_rows))}" if ft_rows else ""),
            (f"student vs control: {_kd_regimes([d for d in diffs if (d['domain'], d['task']) == (domain, task)])}"
             if any((d["domain"], d["task"]) == (domain, task) for d in diffs)
             else "no student-vs-control runs for this task")),
        "Data required": (
            "Labeled task data.",
            "A teacher plus a transfer set (labels optional).",
            _q_data(ft) if ft else "",
            (_q_data(kd) + (f"; the teacher used {fmt_count(teacher['labeled_examples'])} labeled"
                         if teacher else "")) if kd else ""),
        "Output quality": (
            "The reference quality.",
            "Close to the teacher, below it when the student is much smaller.",
            "; ".join(_q_quality(r) for r in ft_rows), "; ".join(_q_quality(r) for r in kd_rows)),
        "Cost": (
            "One training run of the full model.",
            "Teacher training, plus teacher forward passes, plus student training.",
            _q_cost(ft) if ft else "",
            (_q_cost(kd) + (f"; teacher forward adds {fmt_flops(kd['teacher_flops'])}"
                         if _ok(kd["teacher_flops"]) else "")
             + (f"; after the teacher's own {fmt_flops(teacher['train_flops'])}"
                if teacher and teacher is not kd else "")) if kd else ""),
        "Where it runs best": (
            "Where the full model's latency and memory are affordable (often GPU).",
            "CPU / edge / high-throughput serving.",
            f"{ft['method']}: {_latency_phrase(ft, accel)}" if ft else "",
            f"{kd['method']}: " + (f"{_fmt_ratio(kd['speedup_vs_teacher'])} faster than the "
                                   "teacher at batch 1 on CPU; "
                                   if _ok(kd["speedup_vs_teacher"]) else "")
            + _latency_phrase(kd, accel) if kd else ""),
    }
    lines += [f"## {domain} / {task}", "", "| | Fine-tuning | Distillation |", "|---|---|---|"]
    for name, (ft_claim, kd_claim, ft_ev, kd_ev) in table.items():
      ft_cell = ft_claim + (f"<br>**Measured:** {ft_ev}" if ft_ev else "")
      kd_cell = kd_claim + (f"<br>**Measured:** {kd_ev}" if kd_ev else "")
      lines.append(f"| **{name}** | {_md_cell(ft_cell)} | {_md_cell(kd_cell)} |")
    lines.append("")
  return "\n".join(lines)


def _baseline_lines(rs: Sequence[dict[str, Any]], teacher: dict[str, Any] | None, domain: str,
                    task: str) -> list[str]:
  """Is a transformer worth it here: the best baseline row against the teacher."""
  base = _best(r for r in rs if r["kind"] == BASELINE)
  if not base or not teacher:
    return []
  gap = 100 * (teacher["primary_metric_mean"] - base["primary_metric_mean"])
  other = "macro_f1" if teacher["primary_metric"] == "accuracy" else "accuracy"
  also = (f", {other.replace('_f1', '-F1')} {fmt_num(base[other + '_mean'])} vs "
          f"{fmt_num(teacher[other + '_mean'])}"
          if _ok(base[other + "_mean"]) and _ok(teacher[other + "_mean"]) else "")
  return [f"- **{domain}/{task}**: the best baseline ({base['method']}) scores "
          f"{fmt_num(base['primary_metric_mean'])} {_metric_name(teacher)} vs the teacher's "
          f"{fmt_num(teacher['primary_metric_mean'])} ({gap:+.1f} points for the "
          f"transformer{also})."]


def _paired_lines(rs: Sequence[dict[str, Any]], domain: str, task: str) -> list[str]:
  """One line per row with a paired test against its reference row (research/significance.py)."""
  out = []
  for r in rs:
    if not r.get("vs_control"):
      continue
    out.append(f"- **{domain}/{task}**, {r['method']} vs {r['vs_control']} (paired, test "
               f"{_metric_name(r)}): {_fmt_test(_row_test(r))}.")
  return out


def summary(records: Sequence[dict[str, Any]]) -> str:
  """Plain-language findings computed from the records: retention/speed-up, KD vs control regime."""
  rows = aggregate(records)
  diffs = kd_vs_control(records)
  paired = significance.paired_rows(records, series_of=lambda r: MAIN_RUN_SERIES.get(r["method"]))
  lines = ["## Summary", ""]
  tasks = sorted(set(_tasks(rows)) | {(d["domain"], d["task"]) for d in diffs})
  for domain, task in tasks:
    rs = [r for r in rows if (r["domain"], r["task"]) == (domain, task)]
    teacher = teacher_row(rows, domain, task)
    kd = _best(r for r in rs if r["kind"] == "distill")
    if teacher and kd:
      size = (f" with {_fmt_pct(_ratio(kd['params_total'], teacher['params_total']))} of its parameters"
              if _ok(kd["params_total"]) and _ok(teacher["params_total"]) else "")
      speed = (f" and runs {_fmt_ratio(kd['speedup_vs_teacher'])} faster at batch 1 on CPU "
               f"({kd['cpu_device'] or '?'})" if _ok(kd["speedup_vs_teacher"]) else "")
      lines.append(
          f"- **{domain}/{task}**: the best distilled student ({kd['method']}) keeps "
          f"{_fmt_pct(kd['retention_vs_teacher'])} of the teacher's {_metric_name(teacher)} "
          f"({fmt_pm(kd['primary_metric_mean'], kd['primary_metric_std'], kd['n_seeds'])} vs "
          f"{fmt_pm(teacher['primary_metric_mean'], teacher['primary_metric_std'], teacher['n_seeds'])})"
          f"{size}{speed}.")
      fast = _fastest_within(rs, RETENTION_BAR)
      if fast and fast is not kd:
        lines.append(
            f"- **{domain}/{task}**: the fastest student within {_fmt_pct(RETENTION_BAR)} of the "
            f"teacher ({fast['method']}) keeps {_fmt_pct(fast['retention_vs_teacher'])} "
            f"({fmt_pm(fast['primary_metric_mean'], fast['primary_metric_std'], fast['n_seeds'])}) "
            f"and runs "
            f"{_fmt_ratio(fast['speedup_vs_teacher'])} faster at batch 1 on CPU.")
    elif rs:
      lines.append(f"- **{domain}/{task}**: " + (
          "no teacher row (is_teacher), so no retention or speed-up." if not teacher
          else "no distilled student in the full-label runs."))
    lines += _baseline_lines(rs, teacher, domain, task)
    lines += _paired_lines(rs, domain, task)
    task_diffs = [d for d in diffs if (d["domain"], d["task"]) == (domain, task)]
    if task_diffs:
      tested = [(frac, st) for (d, t, name, frac), st in sorted(paired.items())
                if (d, t, name) == (domain, task, "student")]
      if not tested:  # records without test predictions: the raw gaps, said as such
        lines.append(f"- **{domain}/{task}**, data efficiency, KD student vs the control "
                     f"(test {task_diffs[0]['metric']}, student − control, no paired test): KD "
                     f"{_kd_regimes(task_diffs)}.")
      else:  # the verdicts come from the paired tests, not from the raw gaps
        lines.append(f"- **{domain}/{task}**, data efficiency, KD student vs the same-init control "
                     f"(paired, test {task_diffs[0]['metric']}):")
        lines += [f"  - {_fmt_frac(frac)}: {_fmt_test(st)}." for frac, st in tested]
  if not diffs:
    lines.append("- No data-efficiency runs (records with `series` student and control), so no "
                 "statement on when KD beats the control.")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib figures rendered with the Agg canvas; pyplot state is not touched).


def _grid(n: int, w: float = 5.5, h: float = 4.2) -> tuple[Figure, list[Any]]:
  cols = min(n, 2)
  nrows = math.ceil(n / cols)
  fig = Figure(figsize=(w * cols, h * nrows), layout="constrained")
  FigureCanvasAgg(fig)
  axes = [fig.add_subplot(nrows, cols, i + 1) for i in range(n)]
  return fig, axes


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of points not dominated (lower latency x and higher accuracy y), by increasing x."""
  order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
  front, best = [], -math.inf
  for i in order:
    if points[i][1] > best:
      front.append(i)
      best = points[i][1]
  return front


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
  """Accuracy vs CPU batch-1 latency, marker area ∝ params, Pareto front; False if no data."""
  tasks = [t for t in _tasks(rows) if any(
      (r["domain"], r["task"]) == t and _ok(r["cpu_latency_ms_p50"]) and _ok(r["primary_metric_mean"])
      for r in rows)]
  if not tasks:
    return False
  fig, axes = _grid(len(tasks))
  max_params = max((_num(r["params_total"]) or 0 for r in rows), default=0) or 1
  colors = {"finetune": "tab:blue", "distill": "tab:orange"}
  devices: set[str] = set()
  for ax, (domain, task) in zip(axes, tasks):
    rs = [r for r in rows if (r["domain"], r["task"]) == (domain, task)
          and _ok(r["cpu_latency_ms_p50"]) and _ok(r["primary_metric_mean"])]
    xs = [r["cpu_latency_ms_p50"] for r in rs]
    ys = [r["primary_metric_mean"] for r in rs]
    for r, x, y in zip(rs, xs, ys):
      size = 40 + 600 * (_num(r["params_total"]) or 0) / max_params
      ax.errorbar(x, y, yerr=r["primary_metric_std"] or 0, fmt="none", ecolor="0.5", zorder=1)
      ax.scatter(x, y, s=size, c=colors.get(r["kind"], "tab:green"), alpha=0.7, zorder=2,
                 marker="*" if r["is_teacher"] else "o", edgecolors="k", linewidths=0.5)
      ax.annotate(r["method"] + (" (teacher)" if r["is_teacher"] else ""), (x, y),
                  textcoords="offset points", xytext=(6, 6), fontsize=8)
    front = pareto_front(list(zip(xs, ys)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", c="0.3", lw=1,
            label="Pareto front", zorder=0)
    if max(xs) / min(xs) > 10:
      ax.set_xscale("log")
    devices.update(r["cpu_device"] for r in rs if r["cpu_device"])
    ax.set(xlabel="CPU latency, batch 1, p50 (ms)", ylabel=f"test {_metric_name(rs[0])}",
           title=f"{domain} / {task}")
    ax.legend(loc="lower right", fontsize=8, title="marker area ∝ params", title_fontsize=8)
    ax.grid(alpha=0.3)
  fig.suptitle(f"Accuracy vs CPU latency — {', '.join(sorted(devices)) or 'CPU'}", fontsize=10)
  fig.savefig(path, dpi=120)
  return True


def plot_data_efficiency(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
  """Test primary metric vs fraction of labels kept, mean ± std, one line per series; False if no
  data."""
  cells = data_efficiency(records)
  tasks = sorted({(c["domain"], c["task"]) for c in cells})
  if not tasks:
    return False
  fig, axes = _grid(len(tasks))
  for ax, (domain, task) in zip(axes, tasks):
    cs = [c for c in cells if (c["domain"], c["task"]) == (domain, task)]
    lines = sorted({(c["series"], c["method"]) for c in cs})
    per_series = defaultdict(int)
    for series, _ in lines:
      per_series[series] += 1
    for series, method in lines:
      pts = sorted((c for c in cs if (c["series"], c["method"]) == (series, method)),
                   key=lambda c: c["label_fraction"])
      label = series if per_series[series] == 1 else f"{series} ({method})"
      ax.errorbar([c["label_fraction"] for c in pts], [c["metric_mean"] for c in pts],
                  yerr=[c["metric_std"] for c in pts], marker="o", capsize=3, label=label)
    fracs = sorted({c["label_fraction"] for c in cs})
    ax.set_xscale("log")
    ax.set_xticks(fracs, [f"{100 * f:g}%" for f in fracs])
    ax.minorticks_off()
    ax.set(xlabel="fraction of training labels kept (validation labels read in every run)",
           ylabel=f"test {cs[0]['metric']} (mean ± std)",
           title=f"{domain} / {task}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.savefig(path, dpi=120)
  return True


# ----------------------------------------------------------------------------------------------
# Entry point.


def write_report(results_dir: str | os.PathLike[str] | Sequence[dict[str, Any]],
                 out_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
  """Writes table.csv, table.md, table.tex, qualitative.md, summary.md and the plots.

  Args:
    results_dir: results folder (or a result file, or a list of records; see `load_records`).
    out_dir: where to write; default `results_dir` itself (the folder of a results file; required
      for a list of records). The results folder's onnx.json (for a list of records: out_dir's),
      when there is one, adds the ONNX Runtime columns (`aggregate`, `table_markdown`).

  Returns:
    {file name: path} of every file written; pareto.png / data_efficiency.png are absent when no
    record has CPU latency / a `series`.
  """
  records = load_records(results_dir)
  if isinstance(results_dir, (list, tuple)):
    if out_dir is None:
      raise ValueError("write_report: pass out_dir when giving records as a list.")
    source = Path(out_dir)
  else:
    base = Path(results_dir)
    source = base if base.is_dir() else base.parent
  out = Path(out_dir) if out_dir is not None else source
  out.mkdir(parents=True, exist_ok=True)
  onnx = load_onnx(source)
  rows = aggregate(records, onnx)
  text = summary(records)
  paths = {name: out / name for name in
           ("table.csv", "table.md", "table.tex", "qualitative.md", "summary.md")}
  write_csv(rows, paths["table.csv"])
  paths["table.md"].write_text(table_markdown(rows, text, onnx))
  paths["table.tex"].write_text(table_latex(rows))
  paths["qualitative.md"].write_text(qualitative_markdown(rows, records))
  paths["summary.md"].write_text(text)
  for name, plot in (("pareto.png", lambda p: plot_pareto(rows, p)),
                     ("data_efficiency.png", lambda p: plot_data_efficiency(records, p))):
    if plot(out / name):
      paths[name] = out / name
  return paths


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("results_dir", help="folder with cells/*.json or <cell>/result.json records")
  parser.add_argument("--out", default=None, help="output folder (default: results_dir)")
  args = parser.parse_args(argv)
  for name, path in write_report(args.results_dir, args.out).items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  main(sys.argv[1:])
