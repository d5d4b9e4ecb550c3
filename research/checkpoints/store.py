"""Run checkpoints with Orbax: resumable training state and the best-by-validation params export.

Layout of a run directory:

  <run>/checkpoints/<step>/state   TrainState (params, opt_state, step, rng), kept: last N
  <run>/checkpoints/<step>/data    {"epoch", "step_in_epoch", "examples_seen"}: iterator position
  <run>/checkpoints/_CHECKPOINT_METADATA ... the run config (CheckpointManager metadata)
  <run>/best/<step>/params         params only (LoRA merged), the best validation metric so far
  <run>/best/<step>/meta           {"step", "metric", "value", "model": {...}} (model config)
  <run>/final/<step>/params        the last step's params, written by `prune_run` when a grid
                                   deletes a finished run's training checkpoints (disk policy)
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from research.models import registry

PyTree = Any


def _abstract(tree: PyTree) -> PyTree:
  """Arrays -> ShapeDtypeStruct with sharding (restore target); ShapeDtypeStructs pass through."""
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(one, tree)


class CheckpointStore:
  """The last `keep` training checkpoints of a run, saved asynchronously.

  Args:
    directory: checkpoint directory (created).
    keep: number of checkpoints kept.
    metadata: JSON-able run config, written once beside the checkpoints.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 2,
               metadata: Mapping[str, Any] | None = None):
    if keep < 1:
      raise ValueError(f"train.keep_checkpoints={keep}; keep at least 1.")
    self.directory = os.path.abspath(os.fspath(directory))
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data"),
        metadata=dict(metadata) if metadata is not None else None)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: PyTree, position: Mapping[str, Any]) -> None:
    """Starts saving (async); a later save or `wait` finishes it. All processes must call."""
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(position))), force=True)

  def restore(self, target: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
    """Restores (state, position) at `step` (default: latest) into the structure of `target`.

    Without an explicit `step`, a checkpoint that does not restore (truncated array file, missing
    manifest, garbage iterator state) is moved aside to `<run>/corrupt_checkpoints/` with a
    message, and the previous step is tried.

    Args:
      target: a state pytree of arrays or ShapeDtypeStructs; their shardings place the result.
      step: checkpoint step; None for the latest intact one.
    """
    if step is not None:
      return self._restore(target, step)
    while (latest := self.latest_step()) is not None:
      try:
        return self._restore(target, latest)
      except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore raise many kinds
        self._set_aside(latest, e)
    raise FileNotFoundError(f"no intact checkpoint in {self.directory}")

  def _restore(self, target: PyTree, step: int) -> tuple[PyTree, dict]:
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target)), data=ocp.args.JsonRestore()))
    position = dict(out["data"])
    if not {"epoch", "step"} <= set(position):
      raise ValueError(f"iterator position {position!r} lacks epoch/step")
    return out["state"], position

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable checkpoint out of the manager's sight (kept for inspection)."""
    aside = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints",
                         f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    shutil.move(os.path.join(self.directory, str(step)), aside)
    reason = " ".join(str(error).split())[:160]
    print(f"checkpoint step {step} in {self.directory} does not restore ({type(error).__name__}: "
          f"{reason}); moved to {aside}, trying the previous one", file=sys.stderr, flush=True)
    self._mngr.reload()

  def metadata(self) -> dict:
    md = self._mngr.metadata()
    return dict(getattr(md, "custom_metadata", None) or {})

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()


def read_metadata(directory: str | os.PathLike) -> dict:
  """The custom metadata (run config, fingerprint) of a checkpoint directory, without opening it
  for writing; {} when there is none."""
  for path in sorted(glob.glob(os.path.join(os.fspath(directory), "metadata", "*"))):
    try:
      with open(path) as f:
        return dict(json.load(f).get("custom_metadata") or {})
    except (OSError, ValueError, AttributeError):
      continue
  return {}


def _best_handlers() -> dict:
  return {"params": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


class BestExport:
  """Exports params whenever a validation metric improves (higher is better); keeps one.

  The best value survives restarts: it is read back from the export on construction.
  """

  def __init__(self, run_dir: str | os.PathLike, metric: str):
    self.directory = os.path.join(os.path.abspath(os.fspath(run_dir)), "best")
    self.metric = metric
    self._mngr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_handlers=_best_handlers())
    self.best_value = -np.inf
    self.best_step: int | None = None
    step = self._mngr.latest_step()
    if step is not None:
      meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      self.best_value, self.best_step = float(meta["value"]), int(meta["step"])

  def update(self, step: int, metrics: Mapping[str, float], params: PyTree,
             model: Mapping[str, Any]) -> bool:
    """Exports `params` if metrics[metric] beats the best so far. Returns True when exported.

    Args:
      step: training step of these params.
      metrics: validation metrics; must contain `metric`.
      params: params to export (LoRA already merged).
      model: JSON-able model description for `load_run_params` ({"family", "config"}).
    """
    if self.metric not in metrics:
      raise KeyError(f"train.best_metric={self.metric!r} is not a validation metric; have "
                     f"{sorted(metrics)}.")
    value = float(metrics[self.metric])
    if not value > self.best_value:
      return False
    meta = dict(step=int(step), metric=self.metric, value=value, model=dict(model))
    self._mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.PyTreeSave(params), meta=ocp.args.JsonSave(meta)), force=True)
    self.best_value, self.best_step = value, int(step)
    return True

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.close()


def load_best(run_dir: str | os.PathLike) -> tuple[dict, dict]:
  """Reads the exported best params of a run as numpy. Returns (params, meta)."""
  directory = os.path.join(os.path.abspath(os.fspath(run_dir)), "best")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{run_dir} has no exported params ({directory} is missing); is it a "
                            f"finished fine-tuning run directory?")
  mngr = ocp.CheckpointManager(directory, item_handlers=_best_handlers(),
                               options=ocp.CheckpointManagerOptions(create=False))
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory} holds no export.")
  tree = mngr.item_metadata(step)["params"]
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  out = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.PyTreeRestore(restore_args=restore_args), meta=ocp.args.JsonRestore()))
  mngr.close()
  return out["params"], dict(out["meta"])


def has_exported_params(run_dir: str | os.PathLike) -> bool:
  """True when a run directory holds exported best params (`load_run_params` will work)."""
  best = pathlib.Path(run_dir) / "best"
  return best.is_dir() and any(p.name.isdigit() for p in best.iterdir())


def load_run_params(run_dir: str | os.PathLike) -> tuple[dict, Any]:
  """Best-by-validation params of a finished (or running) run.

  Returns:
    (params as numpy float32 (LoRA merged), model config: the family's config class, e.g.
    EncoderConfig, with num_labels/pooling/dtype as trained).
  """
  params, meta = load_best(run_dir)
  family = registry.get_family(meta["model"]["family"])
  return params, family.config_cls(**meta["model"]["config"])


def dir_bytes(path: str | os.PathLike) -> int:
  """Bytes of the regular files under `path` (0 when it does not exist)."""
  total = 0
  for root, _, files in os.walk(os.fspath(path)):
    for f in files:
      p = os.path.join(root, f)
      if not os.path.islink(p):
        total += os.path.getsize(p)
  return total


def _step_dirs(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    return []
  steps = sorted((int(n) for n in os.listdir(directory) if n.isdigit()))
  return [os.path.join(directory, str(s)) for s in steps]


def prune_run(run_dir: str | os.PathLike, *, keep_final: bool = True,
              keep_optimizer: bool = False) -> int:
  """Disk policy for a finished run: what it needs afterwards, not every training checkpoint.

  Kept always: best/ (the best-by-validation params students and reports read), the HF export,
  records. `keep_final`: the last step's params as final/<step>/params. `keep_optimizer`: the last
  full training checkpoint (optimizer moments, to resume or extend training); otherwise every
  training checkpoint is deleted — a finished grid cell is never resumed (its record is its
  result), and AdamW's two moments make a checkpoint 3x the params' size.

  Returns:
    bytes freed.
  """
  run_dir = os.path.abspath(os.fspath(run_dir))
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  steps = _step_dirs(ckpt_dir)
  if not steps:
    return 0
  before = dir_bytes(run_dir)
  if keep_final and not _step_dirs(os.path.join(run_dir, "final")):
    last = steps[-1]
    state = ocp.StandardCheckpointer().restore(os.path.join(last, "state"))
    params = state["params"] if isinstance(state, dict) else state.params
    out = os.path.join(run_dir, "final", os.path.basename(last), "params")
    ckptr = ocp.PyTreeCheckpointer()
    ckptr.save(out, jax.tree.map(np.asarray, params))
  for path in steps[:-1] if keep_optimizer else steps:
    shutil.rmtree(path)
  return before - dir_bytes(run_dir)
