"""The comparison grid: (task × method × seed) cells, each one training run, resumable cell by cell.

A cell is finished when its result record exists under `<results_dir>/cells/` and was trained with
the cell's current settings (its embedded config has the same result-changing fields,
research/train/record.py); a rerun skips it, so an interrupted grid loses nothing. A record of other
settings is *stale*: the grid stops and names the stale cells, and reruns them only when asked
(`rerun_stale`); a student of a stale teacher is stale too. A record that does not parse is set
aside (`.corrupt`) and its cell rerun. Checkpoints live under `<runs_dir>` (not committed); a
distillation cell whose teacher checkpoint is gone (a fresh clone) retrains the teacher first.
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

from research import losses as losses_lib
from research import names
from research import train
from research.checkpoints import store as store_lib
from research.train import record as record_lib
from research.train import workdir as workdir_lib

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


def _flatten(d) -> dict:
  return record_lib.flatten(d.to_dict() if isinstance(d, ml_collections.ConfigDict) else d)


def _apply(c: ml_collections.ConfigDict, overrides: ml_collections.ConfigDict | dict) -> None:
  """Sets dotted run-config fields; a field that is not in the run config fails (locked)."""
  for key, value in _flatten(overrides).items():
    if key in record_lib.MAPPING_FIELDS:
      section, field = key.rsplit(".", 1)
      c[section][field] = ml_collections.ConfigDict(value)
    else:
      c.update_from_flattened_dict({key: value})


def method_def(grid: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  defs = grid.method_defs
  if method not in defs:
    raise ValueError(f"unknown method {method!r}; known: {', '.join(defs)} (grid.method_defs).")
  return defs[method]


def _cell(grid, task, method: str, seed: int, runs_dir: pathlib.Path, fraction: float = 1.0,
          series: str = "") -> Cell:
  """Builds the run config of one (task, method, seed) cell: grid.run < task.run < method.run."""
  spec = method_def(grid, method)
  c = task_config(grid, task)
  c.seed = seed
  c.tags.domain = grid.domain
  c.tags.task = task.name
  suffix = f"/frac{fraction:g}" if series else ""
  name = f"{task.name}/{series or method}{suffix}/seed{seed}"
  c.tags.method = method
  c.tags.series = series
  c.tags.is_teacher = bool(spec.is_teacher) and not series
  c.data.label_fraction = fraction
  distils = bool(spec.teachers)
  _apply(c, spec.run)
  _per_seed_files(c, seed)
  # A task's per-method learning rates (its validation sweep's choice, full-label cells only).
  swept = (task.get("method_lr") or {}).get(method)
  if swept and not series:
    c.optim.lr = float(swept)
  # A teacher-cut control needs its teacher for the init only: no loss reads the teacher outputs.
  reads_teacher = distils and "teacher" in losses_lib.required_outputs(c.distill.losses.to_dict())
  # Teacher and controls see only the labeled fraction, for the step budget of all labels (the
  # students' budget: they read every input).
  c.train.steps_from_full_data = bool(series) and fraction < 1.0 and not reads_teacher
  teachers: tuple[str, ...] = ()
  if distils:
    if series:  # the series' own teacher, fine-tuned on the same fraction
      teachers = tuple(f"{task.name}/{_series_of(grid, t)}{suffix}/seed{seed}"
                       for t in spec.teachers)
      c.data.keep_unlabeled = reads_teacher
    else:
      teachers = tuple(f"{task.name}/{t}/seed{seed}" for t in spec.teachers)
    dirs = tuple(str(runs_dir / t) for t in teachers)
    c.distill.teacher = dirs[0] if len(dirs) == 1 else ""
    c.distill.teachers = dirs if len(dirs) > 1 else ()
  c.name = name
  c.workdir = str(runs_dir / name)
  return Cell(name=name, task=task.name, method=method, seed=seed, config=c, teachers=teachers)


# Run-config paths a method may write with "{seed}": per-seed files made outside the grid from the
# seed's teacher (its generated answers, its label logits).
SEEDED_FIELDS = (("data", "answers"), ("distill", "teacher_logits"))


def _per_seed_files(c: ml_collections.ConfigDict, seed: int) -> None:
  for section, field in SEEDED_FIELDS:
    value = c[section].get(field)
    if isinstance(value, str) and "{seed}" in value:
      c[section][field] = value.replace("{seed}", str(seed))


def _series_of(grid, method: str) -> str:
  for series, m in grid.data_efficiency.series.items():
    if m == method:
      return series
  raise ValueError(f"data-efficiency series use teacher method {method!r}, which no series "
                   f"trains; grid.data_efficiency.series = {grid.data_efficiency.series.to_dict()}.")


def cells(grid: ml_collections.ConfigDict) -> list[Cell]:
  """All cells of the grid, teachers before the students that need them."""
  runs_dir = pathlib.Path(grid.runs_dir)
  for m in grid.methods:
    method_def(grid, m)
  out: list[Cell] = []
  de = grid.data_efficiency
  for task in grid.tasks:
    methods = [m for m in grid.methods if applies(grid, m, task.name)]
    for seed in grid.seeds:
      for method in methods:
        out.append(_cell(grid, task, method, seed, runs_dir))
    if de.enabled and task.name in de.tasks:
      # At 100% of labels the main cells (same configs) are the series' points: not run twice.
      main_point = set(de.series.values()) <= set(grid.methods)
      for seed in de.seeds:
        for frac in de.fractions:
          if frac >= 1.0 and main_point and seed in grid.seeds:
            continue
          for series, method in de.series.items():
            out.append(_cell(grid, task, method, seed, runs_dir, frac, series))
  return _teachers_first(out)


def applies(grid, method: str, task: str) -> bool:
  """A method def with `tasks` runs on those tasks only (e.g. a teacher file built for one task)."""
  only = tuple(method_def(grid, method).get("tasks", ()))
  return not only or task in only


def _teachers_first(out: list[Cell]) -> list[Cell]:
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
  return store_lib.has_exported_params(runs_dir / name)


# The teacher of a cell is its teacher cell (by name); the path depends on runs_dir only.
CELL_IGNORE = ("distill.teacher", "distill.teachers")


def read_record(path: pathlib.Path) -> dict | None:
  """A cell's record, or None (with a message; the file is set aside as .corrupt) if it does not
  parse."""
  try:
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
      raise ValueError("not a JSON object")
    return record
  except (OSError, ValueError) as e:
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    print(f"cell record {path} does not parse ({type(e).__name__}: {e}); moved to {aside}, the "
          f"cell will be rerun", flush=True)
    return None


def cell_diff(record: dict, cell: Cell) -> dict:
  """{field: (record's, cell's)} where a record was trained with other settings than the cell."""
  saved = record.get("config")
  if saved is None:
    return {"config": ("missing", "present")}
  return record_lib.config_diff(saved, cell.config, ignore=CELL_IGNORE)


def stale_cells(grid: ml_collections.ConfigDict, all_cells: Sequence[Cell] | None = None
                ) -> dict[str, dict]:
  """{cell name: field diff} of the cells whose record or run directory holds other settings;
  students of a stale teacher are stale too (diff {"teacher": ...})."""
  results_dir = pathlib.Path(grid.results_dir)
  all_cells = cells(grid) if all_cells is None else all_cells
  stale: dict[str, dict] = {}
  for c in all_cells:
    path = result_path(results_dir, c)
    record = read_record(path) if path.exists() else None
    diff = cell_diff(record, c) if record is not None else {}
    if not diff and record is None:  # a half-finished run of other settings
      diff = workdir_lib.workdir_diff(c.config)
    if diff:
      stale[c.name] = diff
  for c in all_cells:  # teachers come first
    bad = [t for t in c.teachers if t in stale]
    if bad and c.name not in stale:
      stale[c.name] = {"teacher": (bad[0], "rerun")}
  return stale


def _select(all_cells: list[Cell], only: Sequence[str]) -> list[Cell]:
  """Cells whose name contains one of `only` (and their teachers); all cells for ()."""
  if not only:
    return all_cells
  wanted = {c.name for c in all_cells if any(s in c.name for s in only)}
  by_name = {c.name: c for c in all_cells}
  stack = list(wanted)
  while stack:
    for t in by_name[stack.pop()].teachers:
      if t not in wanted:
        wanted.add(t)
        stack.append(t)
  return [c for c in all_cells if c.name in wanted]


def run_grid(grid: ml_collections.ConfigDict,
             runner: Callable[[ml_collections.ConfigDict], dict] | None = None,
             only: Sequence[str] = (), rerun_stale: bool = False) -> list[dict]:
  """Runs every unfinished cell, writing each result record as soon as it finishes.

  Args:
    grid: a grid config (configs/bfsi.py etc.).
    runner: run config -> result record; default `research.train.run`.
    only: if given, only cells whose name contains one of these substrings (and their teachers).
    rerun_stale: rerun the cells whose record (or run directory) holds other settings than the
      cell's config now; without it such cells stop the grid with a message naming them.

  Returns:
    The result records of all cells (finished earlier or now).
  """
  runner = runner or train.run
  results_dir = pathlib.Path(grid.results_dir)
  runs_dir = pathlib.Path(grid.runs_dir)
  all_cells = _select(cells(grid), only)
  (results_dir / "cells").mkdir(parents=True, exist_ok=True)
  adopt_renamed(results_dir, all_cells)
  stale = stale_cells(grid, all_cells)
  if stale and not rerun_stale:
    first, diff = next(iter(stale.items()))
    names = ", ".join(list(stale)[:8]) + (f" (+{len(stale) - 8} more)" if len(stale) > 8 else "")
    raise ValueError(
        f"grid {grid.domain}: {len(stale)} cell(s) were trained with other settings than their "
        f"config now: {names} ({first}: {record_lib.describe_diff(diff, 4)}); rerun them with "
        f"--rerun_stale (experiments/compare.py; rerun_stale=True), or use another "
        f"results_dir/runs_dir.")
  todo = [c for c in all_cells if c.name in stale or not result_path(results_dir, c).exists()]
  # A student needs its teachers' checkpoints even when the teachers' records exist already.
  needed = {t for c in todo for t in c.teachers if not _teacher_ready(runs_dir, t)}
  todo_names = {c.name for c in todo} | needed
  todo = [c for c in all_cells if c.name in todo_names]
  note = f" ({len(stale)} stale, rerun)" if stale else ""
  print(f"grid {grid.domain}: {len(all_cells)} cells, {len(all_cells) - len(todo)} finished, "
        f"{len(todo)} to run{note}", flush=True)
  bar = tqdm(todo, desc=f"grid {grid.domain}", unit="cell")
  for cell in bar:
    bar.set_postfix_str(cell.name)
    t0 = time.time()
    if cell.name in stale:
      workdir_lib.clear_run(str(pathlib.Path(cell.config.workdir).resolve()))
    record = runner(copy.deepcopy(cell.config))
    record.setdefault("cell", cell.name)
    record.setdefault("grid_seconds", time.time() - t0)
    # atomic: a killed grid never leaves a half-written record
    record_lib.write_json(result_path(results_dir, cell), record, default=_json_default)
    save_curve(results_dir, cell)
    prune(grid, cell)
  out = []
  for c in all_cells:
    path = result_path(results_dir, c)
    if path.exists() and (record := read_record(path)) is not None:
      out.append(record)
  return out


def adopt_renamed(results_dir: pathlib.Path, all_cells: Sequence[Cell]) -> None:
  """A cell without a record takes the record of its old method name (research/names.py) when
  that record's settings are the cell's: renamed (file, method, tags) with `renamed_from`."""
  old_of = {new: old for old, new in names.LEGACY_METHODS.items()}
  for c in all_cells:
    path = result_path(results_dir, c)
    if path.exists() or c.method not in old_of:
      continue
    old = old_of[c.method]
    old_name = c.name.replace(f"/{c.method}/", f"/{old}/", 1)
    old_path = cell_file(results_dir, old_name)
    if not old_path.exists() or (record := read_record(old_path)) is None or cell_diff(record, c):
      continue
    record.update(method=c.method, cell=c.name, renamed_from=old)
    record.setdefault("config", {}).setdefault("tags", {})["method"] = c.method
    record_lib.write_json(path, record, default=_json_default)
    old_path.unlink()
    curve = cell_file(results_dir, old_name, "curves", ".jsonl")
    if curve.exists():
      curve.rename(cell_file(results_dir, c.name, "curves", ".jsonl"))
    print(f"cell {c.name}: the record of {old_name} (same settings, old method name) is its "
          f"record now", flush=True)


def prune(grid: ml_collections.ConfigDict, cell: Cell) -> None:
  """Applies the grid's disk policy (grid.disk; absent: keep everything) to a finished cell."""
  disk = grid.get("disk")
  if disk is not None:
    store_lib.prune_run(cell.config.workdir, keep_final=disk.keep_final,
                        keep_optimizer=disk.keep_optimizer)


def task_config(grid: ml_collections.ConfigDict, task) -> ml_collections.ConfigDict:
  """The run config every cell of `task` starts from (grid.run < task.run), before its method."""
  c = copy.deepcopy(grid.run)
  _apply(c, task.get("run", {}))
  return c


def _json_default(o):
  try:
    return o.tolist()
  except AttributeError:
    return str(o)
