"""The comparison grid: (task × method × seed) cells, each one training run, resumable cell by cell.

A cell is finished when its result record exists under `<results_dir>/cells/`; a rerun skips it, so
an interrupted grid loses nothing. Checkpoints live under `<runs_dir>` (not committed); a distillation
cell whose teacher checkpoint is gone (a fresh clone) retrains the teacher first.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pathlib
import shutil
import time
from typing import Callable, Sequence

import ml_collections
from tqdm.auto import tqdm

from configs import common

# Stable method identifiers (table.csv `method` column), in table order.
FINETUNE_METHODS = ("head_only", "finetune_last_k", "finetune_full", "bitfit", "lora")
SMALL_METHODS = ("small_labels_only", "kd_soft", "kd_hidden_attn", "kd_labels_only",
                 "kd_multi_teacher", "kd_soft_2layer", "kd_soft_alpha0")
ALL_METHODS = FINETUNE_METHODS + SMALL_METHODS
TEACHER_METHOD = "finetune_full"
DATA_EFFICIENCY_SERIES = ("teacher", "control", "student")


@dataclasses.dataclass
class Cell:
  """One training run of the grid."""
  name: str                      # e.g. "phrasebank_allagree/kd_soft/seed0"
  task: str
  method: str
  seed: int
  config: ml_collections.ConfigDict
  teachers: tuple[str, ...] = ()  # cell names whose exported params this cell needs


def _task_config(grid: ml_collections.ConfigDict, task: ml_collections.ConfigDict,
                 seed: int) -> ml_collections.ConfigDict:
  """Base run config of one task: common defaults, then the grid's, then the task's overrides."""
  c = common.base_config()
  c.update_from_flattened_dict(_flatten(grid.get("run", {})))
  c.update_from_flattened_dict(_flatten(task.get("run", {})))
  c.seed = seed
  c.tags.domain = grid.domain
  c.tags.task = task.name
  return c


def _flatten(d, prefix="") -> dict:
  if isinstance(d, ml_collections.ConfigDict):
    d = d.to_dict()
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _method_config(grid, task, method: str, seed: int, runs_dir: pathlib.Path,
                   fraction: float = 1.0, series: str = "") -> Cell:
  """Builds the run config of one (task, method, seed) cell."""
  c = _task_config(grid, task, seed)
  m = grid.methods_cfg
  suffix = f"/frac{fraction:g}" if series else ""
  name = f"{task.name}/{series or method}{suffix}/seed{seed}"
  teacher_name = f"{task.name}/{TEACHER_METHOD}/seed{seed}"
  teachers: tuple[str, ...] = ()
  c.tags.method = method
  c.tags.series = series
  c.data.label_fraction = fraction
  # Teacher and control see only the labeled fraction: same step budget as with all labels.
  c.train.steps_from_full_data = bool(series) and fraction < 1.0 and not method.startswith("kd_")
  if method == "head_only":
    c.mask.rule = "head_only"
    c.optim.lr = m.head_only_lr
    c.train.epochs = m.head_only_epochs
  elif method == "finetune_last_k":
    c.mask.rule = "last_k"
    c.mask.k = m.last_k
  elif method == "finetune_full":
    c.mask.rule = "full"
    c.tags.is_teacher = not series
  elif method == "bitfit":
    c.mask.rule = "bitfit"
    c.optim.lr = m.bitfit_lr
  elif method == "lora":
    c.mask.rule = "lora"
    c.optim.lr = m.lora_lr
  elif method == "small_labels_only":
    c.model.layers = tuple(m.student_layers)
  elif method.startswith("kd_"):
    if series:
      teacher_name = f"{task.name}/teacher{suffix}/seed{seed}"
      c.data.keep_unlabeled = True
    teachers = (teacher_name,)
    c.distill.teacher = str(runs_dir / teacher_name)
    c.distill.student_init = "layers"
    c.distill.student_layers = tuple(m.student_layers)
    c.distill.temperature = m.temperature
    c.train.epochs = m.kd_epochs
    if method == "kd_soft":
      c.distill.losses = ml_collections.ConfigDict({"ce": 1 - m.alpha, "kd_kl": m.alpha})
    elif method == "kd_soft_alpha0":
      # Soft targets only (alpha = 1): the labeled inputs' labels are not used at all.
      c.distill.losses = ml_collections.ConfigDict({"ce": 0.0, "kd_kl": 1.0})
    elif method == "kd_soft_2layer":
      c.distill.student_layers = tuple(m.student_layers_2)
      c.distill.losses = ml_collections.ConfigDict({"ce": 1 - m.alpha, "kd_kl": m.alpha})
    elif method == "kd_hidden_attn":
      c.distill.losses = ml_collections.ConfigDict({
          "ce": 1 - m.alpha, "kd_kl": m.alpha, "hidden_mse": m.hidden_weight,
          "attn_kl": m.attn_weight})
      c.distill.layer_map = tuple(m.layer_map)
    elif method == "kd_labels_only":
      c.distill.losses = ml_collections.ConfigDict({"labels_only": 1.0})
    elif method == "kd_multi_teacher":
      second = f"{task.name}/finetune_last_k/seed{seed}"
      teachers = (teacher_name, second)
      c.distill.teacher = ""
      c.distill.teachers = tuple(str(runs_dir / t) for t in teachers)
      c.distill.teacher_weights = (0.5, 0.5)
      c.distill.losses = ml_collections.ConfigDict({"ce": 1 - m.alpha, "multi_kl": m.alpha})
    else:
      raise ValueError(f"unknown method {method!r}; known: {', '.join(ALL_METHODS)}")
  else:
    raise ValueError(f"unknown method {method!r}; known: {', '.join(ALL_METHODS)}")
  c.name = name
  c.workdir = str(runs_dir / name)
  return Cell(name=name, task=task.name, method=method, seed=seed, config=c, teachers=teachers)


def cells(grid: ml_collections.ConfigDict) -> list[Cell]:
  """All cells of the grid, teachers before the students that need them."""
  runs_dir = pathlib.Path(grid.runs_dir)
  unknown = [m for m in grid.methods if m not in ALL_METHODS]
  if unknown:
    raise ValueError(f"unknown method(s) {unknown} in grid.methods; known: {', '.join(ALL_METHODS)}")
  out: list[Cell] = []
  for task in grid.tasks:
    for seed in grid.seeds:
      for method in grid.methods:
        out.append(_method_config(grid, task, method, seed, runs_dir))
    if grid.data_efficiency.enabled and task.name in grid.data_efficiency.tasks:
      # At 100% of labels the main cells (same configs) are the series' points: not run twice.
      main_point = {TEACHER_METHOD, "small_labels_only", "kd_soft"} <= set(grid.methods)
      for seed in grid.data_efficiency.seeds:
        for frac in grid.data_efficiency.fractions:
          if frac >= 1.0 and main_point and seed in grid.seeds:
            continue
          out.append(_method_config(grid, task, TEACHER_METHOD, seed, runs_dir, frac, "teacher"))
          out.append(_method_config(grid, task, "small_labels_only", seed, runs_dir, frac,
                                    "control"))
          out.append(_method_config(grid, task, "kd_soft", seed, runs_dir, frac, "student"))
  by_name = {c.name: c for c in out}
  ordered: list[Cell] = []
  seen: set[str] = set()

  def visit(cell: Cell):
    if cell.name in seen:
      return
    for t in cell.teachers:
      if t not in by_name:
        raise ValueError(f"cell {cell.name} needs teacher cell {t}, which is not in the grid; "
                         f"add {t.split('/')[1]!r} to grid.methods")
      visit(by_name[t])
    seen.add(cell.name)
    ordered.append(cell)

  for c in out:
    visit(c)
  return ordered


def cell_file(results_dir: pathlib.Path, name: str, kind: str = "cells",
              suffix: str = ".json") -> pathlib.Path:
  """Where a cell's files live under results_dir: <kind>/<name with "/" as "__"><suffix>."""
  return results_dir / kind / (name.replace("/", "__") + suffix)


def result_path(results_dir: pathlib.Path, cell: Cell) -> pathlib.Path:
  return cell_file(results_dir, cell.name)


def save_curve(results_dir: pathlib.Path, cell: Cell) -> None:
  """Copies a cell's learning curve (metrics.jsonl) beside its record, to commit with the table."""
  src = pathlib.Path(cell.config.workdir) / "metrics.jsonl"
  if src.exists():
    dst = cell_file(results_dir, cell.name, "curves", ".jsonl")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _teacher_ready(runs_dir: pathlib.Path, name: str) -> bool:
  from research import train  # pylint: disable=g-import-not-at-top
  return train.has_exported_params(runs_dir / name)


def run_grid(grid: ml_collections.ConfigDict,
             runner: Callable[[ml_collections.ConfigDict], dict] | None = None,
             only: Sequence[str] = ()) -> list[dict]:
  """Runs every unfinished cell, writing each result record as soon as it finishes.

  Args:
    grid: a grid config (configs/bfsi.py etc.).
    runner: run config -> result record; default `research.train.run`.
    only: if given, only cells whose name contains one of these substrings (and their teachers).

  Returns:
    The result records of all cells (finished earlier or now).
  """
  if runner is None:
    from research import train  # pylint: disable=g-import-not-at-top
    runner = train.run
  results_dir = pathlib.Path(grid.results_dir)
  runs_dir = pathlib.Path(grid.runs_dir)
  all_cells = cells(grid)
  if only:
    wanted = {c.name for c in all_cells if any(s in c.name for s in only)}
    by_name = {c.name: c for c in all_cells}
    stack = list(wanted)
    while stack:
      for t in by_name[stack.pop()].teachers:
        if t not in wanted:
          wanted.add(t)
          stack.append(t)
    all_cells = [c for c in all_cells if c.name in wanted]
  (results_dir / "cells").mkdir(parents=True, exist_ok=True)
  todo = [c for c in all_cells if not result_path(results_dir, c).exists()]
  # A student needs its teachers' checkpoints even when the teachers' records exist already.
  needed = {t for c in todo for t in c.teachers if not _teacher_ready(runs_dir, t)}
  by_name = {c.name: c for c in all_cells}
  todo_names = {c.name for c in todo} | needed
  todo = [c for c in all_cells if c.name in todo_names]
  print(f"grid {grid.domain}: {len(all_cells)} cells, {len(all_cells) - len(todo)} finished, "
        f"{len(todo)} to run", flush=True)
  bar = tqdm(todo, desc=f"grid {grid.domain}", unit="cell")
  for cell in bar:
    bar.set_postfix_str(cell.name)
    t0 = time.time()
    record = runner(copy.deepcopy(cell.config))
    record.setdefault("cell", cell.name)
    record.setdefault("grid_seconds", time.time() - t0)
    path = result_path(results_dir, cell)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=_json_default))
    os.replace(tmp, path)  # atomic: a killed grid never leaves a half-written record
    save_curve(results_dir, cell)
  return [json.loads(result_path(results_dir, c).read_text()) for c in all_cells
          if result_path(results_dir, c).exists()]


def _json_default(o):
  try:
    return o.tolist()
  except AttributeError:
    return str(o)
