"""Exports encoder classifiers to ONNX and measures them in ONNX Runtime (CPU), f32 and int8.

  python -m experiments.export_onnx --results_dir results/bfsi          # every cell -> onnx.json
  python -m experiments.export_onnx --run_dirs runs/onnx/teacher,runs/onnx/kd_soft \
      --out results/bench/onnx_phrasebank.json

Per run directory (a grid cell's `run_dir`, or one given): its best params are exported with
jax2onnx (research/export/onnx.py), quantized with ORT's dynamic int8, and each model is run on
the run's test split (accuracy, macro-F1, max |ORT - JAX| logits in f32) and timed at batch 1 and
batch `--throughput_batch` on `--seq_len`-wide inputs (research/latency.py's width, so the ONNX
columns sit beside the JAX CPU ones), interleaved with our jitted JAX forward of the same params
over `--rounds` (medians), so `onnx_*_speedup_vs_jax` compares the two under the same load. The
JSON holds `runs` (one entry per run) and `rows` keyed "<task>/<method>" with the seed means of
every `onnx_*` field (and only those), so a report merges a table row with
`row.update(rows.get(f"{task}/{method}", {}))`. Needs the export extra (README).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
from typing import Any

from absl import flags
import ml_collections
import numpy as np

from experiments import cli

_RESULTS_DIR = flags.DEFINE_string("results_dir", None, "A grid's results folder: exports the "
                                   "run_dir of every cells/*.json record; writes onnx.json there.")
_RUN_DIRS = flags.DEFINE_list("run_dirs", [], "Run directories to export (instead of a grid).")
_OUT = flags.DEFINE_string("out", "", "Output JSON (default <results_dir>/onnx.json).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", "runs/onnx_export", "Where the .onnx files go.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Width of the timed inputs.")
_ITERS = flags.DEFINE_integer("iters", 50, "Timed batch-1 calls (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed calls before timing.")
_THROUGHPUT_BATCH = flags.DEFINE_integer("throughput_batch", 32, "Batch size for ex/s.")
_THROUGHPUT_ITERS = flags.DEFINE_integer("throughput_iters", 10, "Timed calls at that batch.")
_THREADS = flags.DEFINE_integer("threads", 0, "ORT intra-op threads (0: ORT's default).")
_SPIN = flags.DEFINE_bool("spin", False, "Let ORT's idle threads busy-wait (ORT's default; "
                          "slower on a shared machine).")
_SEEDS = flags.DEFINE_list("seeds", [], "With --results_dir: export only these seeds' cells (ONNX "
                            "latency and size do not depend on the seed; empty: every seed).")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch", 32, "Batch size of the test-split pass.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds (ORT f32, int8, JAX interleaved); "
                               "each reported time is the median over rounds.")

PRECISIONS = ("f32", "int8")


def run_config(run_dir: str) -> ml_collections.ConfigDict:
  from research.train import workdir  # pylint: disable=g-import-not-at-top
  saved = workdir.saved_config(run_dir)
  if saved is None:
    raise FileNotFoundError(f"{run_dir}: no fingerprint.json / checkpoints / result.json; is it a "
                            "finished run directory?")
  return ml_collections.ConfigDict(saved)


def jax_logits(params, cfg, batches) -> dict[str, np.ndarray]:
  """Our JAX logits of the real rows (f32 compute, as the ONNX graph)."""
  import jax  # pylint: disable=g-import-not-at-top
  from research.models import encoder  # pylint: disable=g-import-not-at-top
  module = encoder.EncoderClassifier(cfg.replace(dtype="float32"))
  fn = jax.jit(lambda p, b: module.apply({"params": p}, b["input_ids"], b["attention_mask"],
                                         b["token_type_ids"])["logits"])
  out, index = [], []
  for b in batches:
    keep = np.asarray(b["valid"]) > 0
    x = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out.append(np.asarray(fn(params, x))[keep])
    index.append(np.asarray(b["index"])[keep])
  return {"logits": np.concatenate(out), "index": np.concatenate(index)}


def _by_index(pred: dict[str, np.ndarray]) -> np.ndarray:
  return pred["logits"][np.argsort(pred["index"])]


def _export(params, cfg, folder: pathlib.Path, width: int) -> dict[str, pathlib.Path]:
  from research.export import onnx as ox  # pylint: disable=g-import-not-at-top
  f32 = ox.export_classifier(params, cfg, folder / f"f32_L{width}.onnx", seq_len=width)
  return {"f32": f32, "int8": ox.quantize_int8(f32, folder / f"int8_L{width}.onnx")}


def _accuracy(task, evals, ref, settings) -> dict[str, Any]:
  """Test-split metrics of each ONNX model and max |ORT - JAX| logits."""
  from research.export import onnx as ox  # pylint: disable=g-import-not-at-top
  out, argmax = {}, {}
  for prec in PRECISIONS:
    sess = ox.session(evals[prec], threads=settings["threads"])
    pred = ox.predict(sess, task.eval_batches("test", settings["eval_batch"]))
    metrics = task.evaluate(pred, "test")
    logits = _by_index(pred)
    argmax[prec] = logits.argmax(-1)
    out.update({f"onnx_{prec}_acc": metrics.get("accuracy"),
                f"onnx_{prec}_macro_f1": metrics.get("macro_f1"),
                f"onnx_{prec}_max_abs_diff": float(np.abs(logits - _by_index(ref)).max()),
                f"onnx_{prec}_mb": evals[prec].stat().st_size / 1e6})
  out["onnx_int8_agreement"] = float(np.mean(argmax["int8"] == argmax["f32"]))  # same class
  out["onnx_int8_acc_drop_points"] = 100 * (out["onnx_f32_acc"] - out["onnx_int8_acc"])
  return out


def _jax_bench(params, cfg, settings, token: int) -> dict[str, Any]:
  """Our jitted JAX forward, timed like the ONNX models (same width, batches, inputs)."""
  from research import cost  # pylint: disable=g-import-not-at-top
  from research.models import encoder  # pylint: disable=g-import-not-at-top
  module = encoder.EncoderClassifier(cfg)
  width, big = settings["seq_len"], settings["throughput_batch"]
  apply_fn = lambda p, b: module.apply({"params": p}, b["input_ids"], b["attention_mask"],
                                       b["token_type_ids"])["logits"]
  make = lambda n: {"input_ids": np.full((n, width), token, np.int32),
                    "attention_mask": np.ones((n, width), np.int32),
                    "token_type_ids": np.zeros((n, width), np.int32)}
  one = cost.benchmark_latency(apply_fn, make, params=params, batch_sizes=(1,),
                               warmup=settings["warmup"], iters=settings["iters"], backend="cpu")
  many = cost.benchmark_latency(apply_fn, make, params=params, batch_sizes=(big,), warmup=2,
                                iters=settings["throughput_iters"], backend="cpu")
  return {"batch1_p50_ms": one["batch1_p50_ms"], "batch1_p90_ms": one["batch1_p90_ms"],
          "throughput_eps": many["throughput_eps"]}


def _timings(params, cfg, timed, settings) -> dict[str, Any]:
  """ORT f32, ORT int8 and our JAX route, interleaved over `rounds` (median of the rounds), so
  load from other processes on a shared machine hits all three alike."""
  from research.export import onnx as ox  # pylint: disable=g-import-not-at-top
  token = min(1000, cfg.vocab_size - 1)
  sessions = {p: ox.session(timed[p], threads=settings["threads"], spin=settings["spin"])
              for p in PRECISIONS}
  runs: dict[str, list[dict[str, Any]]] = {p: [] for p in (*PRECISIONS, "jax")}
  for _ in range(settings["rounds"]):
    runs["jax"].append(_jax_bench(params, cfg, settings, token))
    for p in PRECISIONS:
      runs[p].append(ox.benchmark(sessions[p], iters=settings["iters"],
                                  warmup=settings["warmup"], token=token,
                                  throughput_batch=settings["throughput_batch"],
                                  throughput_iters=settings["throughput_iters"]))
  med = lambda p, k: float(np.median([r[k] for r in runs[p]]))
  out = {}
  for p in PRECISIONS:
    out.update({f"onnx_{p}_p50_ms": med(p, "batch1_p50_ms"),
                f"onnx_{p}_p90_ms": med(p, "batch1_p90_ms"),
                f"onnx_{p}_eps": med(p, "throughput_eps"),
                f"onnx_{p}_speedup_vs_jax": med("jax", "batch1_p50_ms") / med(p, "batch1_p50_ms")})
  out.update(jax_cpu_p50_ms=med("jax", "batch1_p50_ms"),
             jax_cpu_p90_ms=med("jax", "batch1_p90_ms"), jax_cpu_eps=med("jax", "throughput_eps"))
  return out


def measure_run(run_dir: str, folder: pathlib.Path, settings: dict[str, Any]) -> dict[str, Any]:
  """Exports one run (f32 + int8) and measures accuracy, parity, size and speed."""
  from research import tasks  # pylint: disable=g-import-not-at-top
  from research.checkpoints import store  # pylint: disable=g-import-not-at-top
  params, cfg = store.load_run_params(run_dir)
  config = run_config(run_dir)
  task = tasks.get(config.task).build(config, cfg)
  width = int(config.data.max_length)
  evals = _export(params, cfg, folder, width)
  timed = evals if settings["seq_len"] == width else _export(params, cfg, folder,
                                                              settings["seq_len"])
  ref = jax_logits(params, cfg, task.eval_batches("test", settings["eval_batch"]))
  out: dict[str, Any] = {"jax_acc": task.evaluate(ref, "test").get("accuracy"),
                         "n_test": int(len(ref["index"])), "onnx_seq_len": settings["seq_len"],
                         "onnx_eval_seq_len": width}
  out.update(_accuracy(task, evals, ref, settings))
  out.update(_timings(params, cfg, timed, settings))
  return out


def _identity(run_dir: str, record: dict | None) -> dict[str, Any]:
  """domain / task / method / seed of a run: its grid record, else its result.json, else its
  config's tags (else the directory's name for the method)."""
  config = run_config(run_dir)
  result = pathlib.Path(run_dir) / "result.json"
  if record is None and result.exists():
    record = json.loads(result.read_text())
  tags, rec = config.get("tags", {}), record or {}
  pick = lambda k: rec.get(k) or tags.get(k) or ""
  return {"domain": pick("domain"), "task": pick("task"),
          "method": pick("method") or pathlib.Path(run_dir).name,
          "seed": rec.get("seed", config.get("seed")), "run_dir": run_dir}


def _table_row(rec: dict[str, Any]) -> bool:
  """A main-table run: all labels, not a data-efficiency series cell."""
  return rec.get("label_fraction", 1.0) >= 1.0 and not rec.get("series")


def targets() -> list[tuple[str, str, dict[str, Any] | None]]:
  """(name, run_dir, grid record or None) to export, from --results_dir or --run_dirs."""
  if _RUN_DIRS.value:
    return [(pathlib.Path(d).name, d, None) for d in _RUN_DIRS.value]
  if not _RESULTS_DIR.value:
    raise ValueError("pass --results_dir (a grid's results folder) or --run_dirs.")
  out = []
  for f in sorted(pathlib.Path(_RESULTS_DIR.value).glob("cells/*.json")):
    rec = json.loads(f.read_text())
    if not _table_row(rec):
      continue
    if _SEEDS.value and str(rec.get("seed")) not in _SEEDS.value:
      continue
    if rec.get("kind", "finetune") in ("finetune", "distill") and rec.get("run_dir"):
      out.append((f.stem, rec["run_dir"], rec))
  return out


def seed_means(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """"<task>/<method>" -> mean of every onnx_* number over its seeds (main runs only)."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in runs.values():
    if "error" not in r and _table_row(r):
      groups.setdefault(f"{r['task']}/{r['method']}", []).append(r)
  rows = {}
  for key, rs in sorted(groups.items()):
    keys = sorted({k for r in rs for k in r if k.startswith("onnx_")})
    rows[key] = {k: float(np.mean([r[k] for r in rs if r.get(k) is not None])) for k in keys}
    rows[key]["onnx_n_seeds"] = len(rs)
  return rows


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def main(argv):
  del argv
  from research import cost  # pylint: disable=g-import-not-at-top
  from research.export import onnx as ox  # pylint: disable=g-import-not-at-top
  from research.train import record  # pylint: disable=g-import-not-at-top
  ox.require()
  out_path = pathlib.Path(_OUT.value or pathlib.Path(_RESULTS_DIR.value or ".") / "onnx.json")
  settings = {"seq_len": _SEQ_LEN.value, "iters": _ITERS.value, "warmup": _WARMUP.value,
              "throughput_batch": _THROUGHPUT_BATCH.value, "eval_batch": _EVAL_BATCH.value,
              "throughput_iters": _THROUGHPUT_ITERS.value, "threads": _THREADS.value,
              "spin": _SPIN.value, "rounds": _ROUNDS.value}
  doc = {"command": "python -m experiments.export_onnx " + " ".join(sys.argv[1:]),
         "host_cpu": f"{cost.host_cpu_name()}, {os.cpu_count()} cores", "settings": settings,
         "versions": ox.versions(), "git_sha": record.git_sha(), "runs": {}}

  def save():
    doc["rows"] = seed_means(doc["runs"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    record.write_json(out_path, doc)

  if out_path.exists():  # resume: keep the cells measured with these settings
    old = json.loads(out_path.read_text())
    if old.get("settings") == settings:
      doc["runs"] = {k: v for k, v in old.get("runs", {}).items() if "error" not in v}
  for name, run_dir, rec in targets():
    if name in doc["runs"] and doc["runs"][name].get("run_dir") == run_dir:
      print(f"{name}: already measured", flush=True)
      continue
    entry = _identity(run_dir, rec) if os.path.isdir(run_dir) else {"run_dir": run_dir}
    if rec:
      entry.update(label_fraction=rec.get("label_fraction", 1.0), series=rec.get("series", ""))
    try:
      entry.update(measure_run(run_dir, pathlib.Path(_EXPORT_DIR.value) / _safe(name), settings))
    except FileNotFoundError as e:  # a cell whose checkpoint is on another machine
      entry["error"] = cli.one_line(e)
    doc["runs"][name] = entry
    shown = ", ".join(f"{k[5:]}={v:.4g}" for k, v in entry.items()
                      if k.startswith("onnx_") and isinstance(v, float))
    print(f"{name}: {shown or 'skipped: ' + entry.get('error', '')}", flush=True)
    save()  # after every cell: an interrupted export resumes
  save()
  print(f"wrote {out_path}")


if __name__ == "__main__":
  cli.run(main)
