"""The comparison job: data checks -> recipe -> grid of runs -> one latency pass -> tables, plots.

Before training (grids with a `checks` section, e.g. configs/own_data.py): each task's splits are
checked (research/data/checks.py; `<results_dir>/data_checks.md`), an error there (a one-class
train, the user's train overlapping their test) stops the job in one line, and the majority-class
and TF-IDF baselines become table rows (`<results_dir>/baselines/`). With `recipe.auto` the number
of epochs follows the training-set size and the learning rate is the best of a short sweep of the
teacher on validation (`<results_dir>/recipe.json`); test is never looked at for either.

Latency depends on the model's shape, not its weights: after the grid, all distinct shapes of the
table are timed in one process, interleaved over several rounds (research/latency.py), on each
backend of this machine, and attached to every record of that shape. `retime` times them again;
otherwise a table whose cached entries do not come from one pass is re-timed whole. Shapes timed
on another machine's accelerator (experiments/bench_latency.py) are kept and shown too.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import shutil
from typing import Any, Sequence

import ml_collections

from research import data as data_lib
from research import grid as grid_lib
from research import latency
from research import report
from research.checkpoints import store as store_lib
from research.data import checks as checks_lib
from research.data import local_text
from research.data.builders import base as builders_base
from research.train import record as record_lib


def apply_latency(records: list[dict[str, Any]], cache: dict[str, Any],
                  results_dir: pathlib.Path) -> None:
  """Sets record["latency"] from the cache and persists it in the cell records."""
  for r in records:
    if "model" in r:
      # Every backend cached for the shape, including ones timed on another machine.
      r["latency"] = latency.for_shape(cache, latency.shape_key(r["model"]))
      if "cell" in r:  # persist, so `python -m research.report` alone shows the same table
        cell_path = grid_lib.cell_file(results_dir, r["cell"])
        if cell_path.exists():  # atomic: a kill never leaves a torn record
          record_lib.write_json(cell_path, r, default=str)


def latency_settings(grid: ml_collections.ConfigDict) -> dict[str, Any]:
  lat = grid.latency
  return {"seq_len": lat.seq_len, "iters": lat.iters, "warmup": lat.warmup,
          "throughput_batch": lat.throughput_batch, "throughput_iters": lat.throughput_iters,
          "rounds": lat.get("rounds", 5)}


def attach_latency(records: list[dict[str, Any]], grid: ml_collections.ConfigDict,
                   results_dir: pathlib.Path, retime: bool = False) -> None:
  """One benchmark pass over every model shape in `records` (unless cached from one pass)."""
  cache = latency.benchmark_missing(
      latency.record_shapes(records), results_dir, backends=latency.available_backends(),
      retime=retime, **latency_settings(grid))
  apply_latency(records, cache, results_dir)


def check_records(results_dir: pathlib.Path) -> None:
  """Every cell record parses; else one line naming the file and the fix."""
  for path in sorted((results_dir / "cells").glob("*.json")):
    try:
      json.loads(path.read_text())
    except ValueError as e:
      raise ValueError(f"cell record {path} does not parse ({e}); run the grid without "
                       f"--report_only to rerun that cell, or delete the file.") from None


# ----------------------------------------------------------------------------------------------
# Before training: data checks, baselines, a recipe sized to the data.


def task_splits(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The splits a task's runs use, and for local_text the user's files as given.

  Returns:
    {"used": {split: examples}, "label_names", "given": {split: examples} | None,
     "user_splits": split names from the user's files, "notes": what the loader dropped}.
  """
  d = cfg.data
  kw = dict(manual_dir=d.manual_dir or None, data_dir=d.data_dir or None)
  info = data_lib.info(d.name, d.config or None, **kw)
  used = {s: data_lib.load(d.name, d.config or None, s, **kw) for s in info.splits}
  out = {"used": used, "label_names": list(info.label_names), "given": None,
         "user_splits": set(info.splits), "notes": {}}
  if d.name == "local_text":
    given, _ = local_text.user_splits(
        builders_base.resolve_manual_dir("local_text", d.manual_dir or None), d.config)
    out.update(given=given, user_splits=set(given),
               notes={k: int(info.metadata.get(k, 0))
                      for k in ("dropped_duplicates", "dropped_overlap")})
  return out


def _overlap_fix(grid: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict) -> str:
  spec = ",".join(x for x in (cfg.data.config, "dedupe=strict") if x)
  # configs/own_data.py takes the column spec as data.columns; task configs as data.config.
  flag = "data.columns" if "columns" in grid.get("data", {}) else "data.config"
  return (f"drop them from train with --config.{flag}='{spec}', or go on anyway with "
          "--config.checks.on_overlap=warn")


def run_checks(grid: ml_collections.ConfigDict, task, cfg: ml_collections.ConfigDict,
               results_dir: pathlib.Path, splits: dict[str, Any]) -> dict[str, Any]:
  """Checks one task's data, writes data_checks[_<task>].md/.json, prints the verdict."""
  report_ = checks_lib.run_checks(
      splits["used"], splits["label_names"], max_words=cfg.data.max_length,
      given=splits["given"], user_splits=splits["user_splits"],
      on_overlap=grid.checks.on_overlap, fix=_overlap_fix(grid, cfg), notes=splits["notes"])
  name = "data_checks" if len(grid.tasks) == 1 else f"data_checks_{task.name}"
  paths = checks_lib.write_report(report_, results_dir, name)
  print(f"data checks {task.name}: {len(report_['errors'])} error(s), "
        f"{len(report_['warnings'])} warning(s) -> {paths['md']}", flush=True)
  for line in report_["warnings"]:
    print(f"  warning: {line}", flush=True)
  if report_["errors"]:
    raise ValueError(f"data checks {task.name}: {report_['errors'][0]} (report: {paths['md']})")
  return report_


def write_baselines(grid: ml_collections.ConfigDict, task, cfg: ml_collections.ConfigDict,
                    results_dir: pathlib.Path, splits: dict[str, Any]) -> None:
  """The majority-class and TF-IDF baselines as records under <results_dir>/baselines/."""
  (results_dir / "baselines").mkdir(parents=True, exist_ok=True)
  for rec in checks_lib.baseline_records(splits["used"], splits["label_names"],
                                         domain=grid.domain, task=task.name,
                                         primary=cfg.train.best_metric):
    rec["cell"] = f"{task.name}/{rec['method']}/seed0"
    record_lib.write_json(grid_lib.cell_file(results_dir, rec["cell"], "baselines"), rec)


def size_epochs(n_train: int, recipe: ml_collections.ConfigDict) -> float:
  """Epochs so that a run sees about recipe.target_examples examples, within
  [min_epochs, max_epochs]: small data gets more passes, large data one."""
  epochs = math.ceil(recipe.target_examples / max(n_train, 1))
  return float(min(max(epochs, recipe.min_epochs), recipe.max_epochs))


def sweep_lr(grid: ml_collections.ConfigDict, task, cfg: ml_collections.ConfigDict,
             results_dir: pathlib.Path, steps: int) -> tuple[float, dict[str, float]]:
  """The teacher (first method) at each recipe.lrs for `steps` steps, resumable like the grid;
  the best by the validation metric (train.best_metric) wins. Test plays no part."""
  recipe = grid.recipe
  sg = copy.deepcopy(grid)
  sg.methods = (grid.methods[0],)
  sg.seeds = (grid.seeds[0],)
  sg.data_efficiency.enabled = False
  sg.results_dir = str(results_dir / "lr_sweep")
  sg.runs_dir = str(pathlib.Path(grid.runs_dir) / "lr_sweep")
  sg.disk = ml_collections.ConfigDict({"keep_final": False, "keep_optimizer": False})
  tasks = []
  for lr in recipe.lrs:
    t = copy.deepcopy(task)
    t.name = f"{task.name}_lr{lr:g}_steps{steps}"  # another budget: other cells, not stale ones
    t.run.optim.lr = lr
    t.run.train.max_steps = steps
    t.run.train.eval_every = steps
    tasks.append(t)
  sg.tasks = tasks
  metric = cfg.train.best_metric
  by_task = {r["task"]: r for r in grid_lib.run_grid(sg)}
  # The records are the sweep's result; its runs are never resumed or distilled from.
  shutil.rmtree(sg.runs_dir, ignore_errors=True)
  scores = {f"{lr:g}": float(by_task[f"{task.name}_lr{lr:g}_steps{steps}"]["metrics"]
                             ["best_validation"][metric]) for lr in recipe.lrs}
  best = max(recipe.lrs, key=lambda lr: (scores[f"{lr:g}"], -lr))  # ties: the smaller lr
  if len(set(scores.values())) == 1:
    print(f"warning: lr sweep {task.name}: every lr scores validation {metric} "
          f"{scores[f'{best:g}']:.4g} after {steps} steps, so the sweep cannot choose; took the "
          f"smallest ({best:g}). A longer sweep (--config.recipe.sweep_steps) can tell them apart.",
          flush=True)
  return float(best), scores


def size_recipe(grid: ml_collections.ConfigDict, task, cfg: ml_collections.ConfigDict,
                results_dir: pathlib.Path, n_train: int) -> dict[str, Any]:
  """Sets the task's epochs (and the students' / head-only's) from n_train and its lr from the
  sweep; returns what was chosen (written to recipe.json)."""
  recipe = grid.recipe
  epochs = size_epochs(n_train, recipe)
  steps_per_epoch = math.ceil(n_train / cfg.data.batch_size)
  task.run.train.epochs = epochs
  # One epoch alone would be evaluated once: evaluate twice so the best checkpoint means something.
  task.run.train.eval_every = steps_per_epoch // 2 if epochs == 1 else 0
  m = grid.methods_cfg
  m.kd_epochs = epochs
  m.head_only_epochs = min(2 * epochs, recipe.max_epochs)
  out = {"n_train": n_train, "batch_size": cfg.data.batch_size, "epochs": epochs,
         "steps_per_epoch": steps_per_epoch}
  if len(recipe.lrs) > 1:
    steps = min(recipe.sweep_steps or steps_per_epoch, steps_per_epoch * int(epochs))
    lr, scores = sweep_lr(grid, task, cfg, results_dir, max(steps, 1))
    out.update(sweep_steps=steps, sweep_metric=cfg.train.best_metric, sweep=scores,
               sweep_tied=len(set(scores.values())) == 1)
  else:
    lr = float(recipe.lrs[0])
  task.run.optim.lr = lr
  out["lr"] = lr
  print(f"recipe {task.name}: {n_train} training examples -> {epochs:g} epochs, lr {lr:g}"
        + (f" (validation {cfg.train.best_metric} by lr: {out['sweep']})" if "sweep" in out
           else ""), flush=True)
  return out


def prepare(grid: ml_collections.ConfigDict, results_dir: pathlib.Path) -> None:
  """Data checks, baselines and the recipe for every task, where the grid asks for them."""
  checks_cfg, recipe = grid.get("checks"), grid.get("recipe")
  chosen = {}
  for task in grid.tasks:
    cfg = grid_lib.task_config(grid, task)
    if not ((checks_cfg and checks_cfg.enabled) or (recipe and recipe.auto)):
      continue
    splits = task_splits(cfg)
    if checks_cfg and checks_cfg.enabled:
      run_checks(grid, task, cfg, results_dir, splits)
      if checks_cfg.baselines:
        write_baselines(grid, task, cfg, results_dir, splits)
    if recipe and recipe.auto:
      chosen[task.name] = size_recipe(grid, task, cfg, results_dir, len(splits["used"]["train"]))
  if chosen:
    record_lib.write_json(results_dir / "recipe.json", chosen)


def disk_usage(grid: ml_collections.ConfigDict) -> str:
  """One line: bytes under runs_dir and results_dir."""
  runs, results = (store_lib.dir_bytes(grid.runs_dir), store_lib.dir_bytes(grid.results_dir))
  return (f"disk: {runs / 1e9:.2f} GB of run directories in {grid.runs_dir}, "
          f"{results / 1e6:.1f} MB of results in {grid.results_dir}")


def main(grid: ml_collections.ConfigDict, *, only: Sequence[str] = (),
         report_only: bool = False, rerun_stale: bool = False,
         retime: bool = False) -> dict[str, pathlib.Path]:
  """Checks the data, runs the grid (unfinished and, with `rerun_stale`, stale cells), times
  every shape in one pass (again with `retime`), writes and prints the table."""
  results_dir = pathlib.Path(grid.results_dir)
  results_dir.mkdir(parents=True, exist_ok=True)
  if not report_only:
    prepare(grid, results_dir)
    grid_lib.run_grid(grid, only=only, rerun_stale=rerun_stale)
  check_records(results_dir)
  # The table covers every record in results_dir, not only the cells this call ran.
  records = report.load_records(results_dir)
  if grid.get("latency") is not None:  # None: a grid whose speed is timed elsewhere (decoders)
    attach_latency(records, grid, results_dir, retime=retime)
  paths = report.write_report(records, out_dir=results_dir)
  print(paths["table.md"].read_text())
  for name, p in paths.items():
    print(f"{name}: {p}")
  print(disk_usage(grid))
  return paths
