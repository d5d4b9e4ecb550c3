"""The one training loop: config -> run directory + result record, for every task and family.

The loop knows nothing about a task, loss or family: it asks the task for batches, the loss and the
metrics (research/tasks/), and the family for `apply` and FLOPs (research/models/registry.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from research import cost
from research import distill
from research import masking
from research.checkpoints import store as store_lib
from research.models import registry
from research.train import flops as flops_lib
from research.train import optim
from research.train import parallel
from research.train import record as record_lib
from research.train import setup as setup_lib
from research.train import sharding
from research.train import step as step_lib
from research.train.workdir import RunInterrupted, WorkdirLock, claim_workdir, StopSignals


@dataclasses.dataclass(frozen=True)
class Plan:
  """Step budget and cadences of a run (optimizer steps)."""
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  ckpt_every: int
  log_every: int


def make_plan(config: Any, task: Any) -> Plan:
  t, d = config.train, config.data
  steps_per_epoch = -(-len(task.splits["train"]) // d.batch_size)
  # The step budget (and eval/checkpoint cadence) of an epoch: the full training set's when asked.
  budget_epoch = steps_per_epoch
  if t.get("steps_from_full_data", False):
    budget_epoch = -(-task.full_train_size // d.batch_size)
  total = t.max_steps if t.max_steps > 0 else max(int(np.ceil(t.epochs * budget_epoch)), 1)
  return Plan(steps_per_epoch=steps_per_epoch, total_steps=total,
              eval_every=t.eval_every or budget_epoch, ckpt_every=t.checkpoint_every or budget_epoch,
              log_every=max(t.log_every, 1))


def enable_compile_cache(path: str) -> None:
  """Keeps compiled XLA programs on disk under `path` ("" = off).

  Other seeds, reruns and resumed runs compile the same programs; with the cache they load them
  (a train step of MiniLM-L6 takes ~15 s to compile on 2 CPU cores), and the FLOP count of a step
  (`cost.step_flops`, which compiles ahead of time) costs a cache hit instead of a second compile.
  """
  if not path:
    return
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _open_store(config: Any, workdir: str, state: Any):
  """The run's checkpoint store, and the state and data position to start from (resumed if any)."""
  store = store_lib.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                    keep=config.train.keep_checkpoints,
                                    metadata={"config": json.loads(config.to_json()),
                                              "fingerprint": record_lib.fingerprint(config)})
  position = {"epoch": 0, "step": 0, "examples_seen": 0, "train_seconds": 0.0}
  if store.latest_step() is None:
    return store, state, position
  state, position = store.restore(state)
  return store, state, position


# ----------------------------------------------------------------------------- the run directory

@dataclasses.dataclass
class Steps:
  """The compiled functions of a run and the step's constant `aux` (teacher params)."""
  train: Any
  eval: Any
  aux: Any
  mesh: Any
  place: Any    # host state / params -> on the mesh as these steps expect them


def compile_steps(config: Any, s: setup_lib.RunSetup, tx: Any, schedule: Any) -> Steps:
  p, fsdp = config.train.parallel, config.train.get("fsdp", 1)
  mesh = parallel.make_mesh(fsdp=fsdp) if p == "jit" else None
  # fsdp > 1: params, optimizer state and teachers sharded over "fsdp" (train/sharding.py).
  place = (functools.partial(sharding.place, mesh=mesh) if fsdp > 1 else
           functools.partial(parallel.place_state, parallel=p, mesh=mesh))
  kd = s.kd.distillation(config) if s.kd is not None else None
  loss_fn = s.task.loss_fn(s.apply, kd=kd, label_smoothing=config.train.label_smoothing)
  # Teachers: placed once, passed to every step, never trained; none when the task cached them.
  attach = getattr(s.task, "attach_teacher", None)
  cached = s.kd is not None and attach is not None and attach(s.kd, config)
  if cached:
    s.kd.cached = True
  aux = None
  if s.kd is not None and not cached:  # under fsdp a big teacher is sharded too
    aux = place(s.kd.aux) if fsdp > 1 else jax.device_put(s.kd.aux)
  if fsdp > 1:
    train = sharding.make_train_step(loss_fn, tx, grad_accum=config.optim.grad_accum, mesh=mesh,
                                     trainable=s.labels, learning_rate_fn=schedule)
    evaluate = sharding.make_eval_step(s.task.predict_fn(s.apply), mesh=mesh)
    return Steps(train=train, eval=evaluate, aux=aux, mesh=mesh, place=place)
  train = step_lib.make_train_step(loss_fn, tx, grad_accum=config.optim.grad_accum, parallel=p,
                                   mesh=mesh, trainable=s.labels, learning_rate_fn=schedule)
  evaluate = step_lib.make_eval_step(s.task.predict_fn(s.apply), parallel=p, mesh=mesh)
  return Steps(train=train, eval=evaluate, aux=aux, mesh=mesh, place=place)


def evaluate(steps: Steps, params: Any, task: Any, split: str, batch_size: int) -> dict:
  """Task metrics of `params` on a split (every example once; padding rows dropped)."""
  outs = []
  for batch in task.eval_batches(split, batch_size):
    out = steps.eval(params, batch)
    keep = out["valid"] > 0
    outs.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[keep], out))
  preds = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
  return task.evaluate(preds, split)


def _finite(host_metrics: dict) -> bool:
  return all(np.isfinite(host_metrics[k]) for k in ("loss", "grad_norm", "param_norm")
             if k in host_metrics)


SPIKE_FACTOR = 10.0  # a loss this many times the first one (at least 1.0) is a divergence


class _Trainer:
  """The training loop's state between steps (one session of a possibly resumed run)."""

  def __init__(self, config, s, steps, store, position, plan, workdir, start_step):
    self.config, self.s, self.steps, self.store, self.plan = config, s, steps, store, plan
    self.log = record_lib.MetricsLog(os.path.join(workdir, "metrics.jsonl"), start_step)
    self.best = store_lib.BestExport(workdir, s.task.primary_metric)
    self.git_sha = record_lib.git_sha()  # the code this session trains with, not at its end
    self.flops = flops_lib.FlopCounter(config, s, position, resumed=start_step > 0)
    self.examples_seen = int(position["examples_seen"])
    self.train_seconds = float(position["train_seconds"])
    self.window: list[dict] = []
    self.pending = None          # (step, device metrics) of the last step, checked one step late
    self.widths: set[int] = set()
    self.compile_seconds = 0.0   # steps with a new batch shape (compilation), excluded from speed
    self.speed_examples = 0      # examples of the other steps of this session
    self.model_meta = {"family": config.model.family,
                       "config": dataclasses.asdict(s.model_cfg)}
    self.stop: StopSignals | None = None
    # "Good" checkpoints: the latest logged loss within SPIKE_FACTOR of the run's first one.
    self.ref_loss = position.get("ref_loss")
    self.last_loss = None
    self.spike_warned = False

  def healthy(self) -> bool:
    """False when the loss has spiked (diverging): such a step is not checkpointed."""
    if self.last_loss is None or self.ref_loss is None:
      return True
    return bool(self.last_loss <= SPIKE_FACTOR * max(self.ref_loss, 1.0))

  def skip_checkpoint(self, step: int) -> None:
    self.log.write({"step": step, "split": "train", "event": "spike_not_checkpointed",
                    "loss": self.last_loss, "ref_loss": self.ref_loss})
    if not self.spike_warned:
      self.spike_warned = True
      print(f"WARNING: loss {self.last_loss:.4g} at step {step} is over {SPIKE_FACTOR:g}x the "
            f"first logged loss ({self.ref_loss:.4g}); not checkpointing until it recovers "
            f"(the last good checkpoint is kept)", file=sys.stderr, flush=True)

  def interrupt(self, step: int) -> None:
    """Finishes the in-flight saves, closes the stores and stops with one line."""
    self.store.wait()
    self.best.wait()
    self.store.close()
    self.best.close()
    name = signal.Signals(self.stop.signum).name
    raise RunInterrupted(f"{name}: stopped at step {step} of {self.plan.total_steps}, checkpoint "
                         f"saved in {self.store.directory}; rerun the same command to resume.")

  def check_pending(self) -> None:
    if self.pending is None:
      return
    step_no, dev = self.pending
    host = {k: float(v) for k, v in jax.device_get(dev).items()}
    self.pending = None
    if not _finite(host):
      self.store.wait()
      last = self.store.latest_step()
      self.log.write({"step": step_no, "split": "train", "event": "nonfinite", **host})
      raise FloatingPointError(
          f"non-finite training values at step {step_no} (loss={host.get('loss')}, "
          f"grad_norm={host.get('grad_norm')}, param_norm={host.get('param_norm')}); stopped. "
          f"Last good checkpoint: step {last} in {self.store.directory}. Lower the learning rate "
          f"or check the data: rerun with --config.optim.lr={self.config.optim.lr / 10:g} "
          f"--overwrite (starts this workdir over) or with a new --config.workdir.")
    self.window.append(host)

  def train_step(self, state, batch):
    width = self.s.task.batch_width(batch)
    new_width = width not in self.widths
    if new_width:
      jax.block_until_ready(state)
      t_compile = time.time()
    state, metrics = self.steps.train(state, batch, self.steps.aux)
    if new_width:
      self.widths.add(width)
      jax.block_until_ready(metrics)
      self.compile_seconds += time.time() - t_compile
    else:
      self.speed_examples += self.config.data.batch_size
    return state, metrics

  def log_train(self, step: int, bar) -> None:
    self.check_pending()
    mean = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[-1]}
    self.window.clear()
    self.log.write({"step": step, "split": "train", "epoch": step / self.plan.steps_per_epoch,
                    "examples_seen": self.examples_seen, **mean})
    self.last_loss = mean["loss"]
    if self.ref_loss is None:
      self.ref_loss = mean["loss"]
    bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{mean.get('lr', 0):.2e}")

  def validate(self, step: int, state) -> None:
    params_now = parallel.unplace_state(state, self.config.train.parallel).params
    val = evaluate(self.steps, state.params, self.s.task, "validation",
                   self.config.data.eval_batch_size)
    self.log.write({"step": step, "split": "validation", **record_lib.scalars(val)})
    self.best.update(step, val, parallel.to_host(masking.model_params(params_now)), self.model_meta)


def _train(tr: _Trainer, state, it, start_step: int) -> tuple[Any, float]:
  """Steps from `start_step` to the plan's end; returns (state, seconds of this session)."""
  plan, p = tr.plan, tr.config.train.parallel
  bar = tqdm(total=plan.total_steps, initial=start_step, desc=tr.config.name, unit="step",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  step, t_loop = start_step, time.time()
  while step < plan.total_steps:
    batch = next(it)
    state, metrics = tr.train_step(state, batch)
    t_count = time.time()
    tr.flops.add(tr.steps.train, state, batch, tr.steps.aux)
    t_loop += time.time() - t_count  # counting FLOPs (a lowering per new width) is not training
    step += 1
    tr.examples_seen += int(batch["valid"].sum()) * jax.process_count()
    tr.check_pending()
    tr.pending = (step, metrics)
    last = step == plan.total_steps
    boundary = step % plan.eval_every == 0 or step % plan.ckpt_every == 0 or last
    if step % plan.log_every == 0 or boundary:
      tr.log_train(step, bar)
    if step % plan.eval_every == 0 or last:
      t_eval = time.time()
      tr.validate(step, state)
      t_loop += time.time() - t_eval  # evaluation is not training time
    stopping = tr.stop is not None and tr.stop.signum is not None and not last
    if step % plan.ckpt_every == 0 or last or stopping:
      if stopping:
        tr.check_pending()  # a non-finite step is not checkpointed
      if last or stopping or tr.healthy():
        pos = dict(it.position, examples_seen=tr.examples_seen, **tr.flops.position(),
                   train_seconds=tr.train_seconds + time.time() - t_loop, ref_loss=tr.ref_loss)
        tr.store.save(step, parallel.unplace_state(state, p), pos)
      else:
        tr.skip_checkpoint(step)
    bar.update(1)
    if stopping:
      bar.close()
      tr.interrupt(step)
  bar.close()
  tr.check_pending()
  return state, time.time() - t_loop


def run(config: Any, *, overwrite: bool = False) -> dict:
  """Trains as `config` says; writes the run directory; returns the result record.

  Run directory (config.workdir): checkpoints/ (resumable, last N), best/ (best-by-validation
  params, see `store.load_run_params`), metrics.jsonl, result.json, fingerprint.json (the config
  it was trained with). Rerunning the same config resumes from the latest checkpoint with the exact
  next batch; a config whose result-changing fields differ (record.result_fields) stops before any
  compute unless `overwrite` (or `config.overwrite`) discards the old run.

  Raises:
    ValueError: bad config values, or a workdir trained with other settings (before any compute).
    RuntimeError: another process holds the workdir.
    FloatingPointError: a non-finite loss/gradient/param norm; the last good checkpoint is kept.
    RunInterrupted: SIGINT/SIGTERM; a checkpoint at the current step was saved first.
  """
  t_start = time.time()
  parallel.maybe_initialize_distributed()  # before check_config: it asks for the device count
  setup_lib.check_config(config)
  workdir = os.path.abspath(config.workdir)
  os.makedirs(workdir, exist_ok=True)
  lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
  try:
    claim_workdir(config, workdir, overwrite or bool(config.get("overwrite", False)))
    return _run(config, workdir, t_start)
  finally:
    if lock is not None:
      lock.release()


def _run(config: Any, workdir: str, t_start: float) -> dict:
  enable_compile_cache(config.compile_cache_dir)
  model_rng, mask_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  s = setup_lib.build(config, model_rng, mask_rng)
  for w in s.warnings:
    print(f"WARNING: {w}", file=sys.stderr, flush=True)
  plan = make_plan(config, s.task)
  tx, schedule = optim.make_optimizer(config.optim, s.labels, plan.total_steps)
  store, state, position = _open_store(config, workdir,
                                       step_lib.create_train_state(s.params, tx, state_rng))
  start_step = int(state.step)
  steps = compile_steps(config, s, tx, schedule)
  tr = _Trainer(config, s, steps, store, position, plan, workdir, start_step)
  state = steps.place(state)
  it = s.task.train_batches(batch_size=config.data.batch_size, seed=config.seed,
                            epoch=position["epoch"], step=position["step"])
  with StopSignals() as stop:
    tr.stop = stop
    state, session_seconds = _train(tr, state, it, start_step)
  store.wait()
  tr.best.wait()
  result = _finish(config, s, tr, session_seconds, workdir, t_start)
  store.close()
  tr.best.close()
  return result


def _init(config) -> str:
  """Where the trained weights started: "teacher_layers" (cut from a fine-tuned, labeled
  teacher), "pretrained" or "random" (config.model, e.g. a fresh student's)."""
  if distill.is_distillation(config) and config.distill.student_init == "layers":
    return "teacher_layers"
  return "random" if config.model.get("random_init") else "pretrained"


def _finish(config, s, tr: _Trainer, session_seconds: float, workdir: str, t_start: float) -> dict:
  """Validation and test metrics of the best-by-validation params; exports; the result record."""
  best_params, _ = store_lib.load_best(workdir)
  placed = tr.steps.place(best_params)
  bs = config.data.eval_batch_size
  val_metrics = evaluate(tr.steps, placed, s.task, "validation", bs)
  test_metrics = evaluate(tr.steps, placed, s.task, "test", bs)  # test: read once, here
  tr.log.write({"step": tr.plan.total_steps, "split": "test", **record_lib.scalars(test_metrics)})
  if jax.process_index() == 0:  # the best params as an HF folder too (config.json + safetensors)
    registry.save_hf(best_params, s.model_cfg, workdir, family=config.model.family)
  hf_file = os.path.join(workdir, "model.safetensors")
  ckpt_bytes = (cost.checkpoint_bytes(hf_file) if os.path.exists(hf_file)
                else masking.count(best_params)["bytes_total"])
  train_seconds = tr.train_seconds + session_seconds
  n_labeled = s.task.labeled_count("train")
  if (s.kd is not None and not s.kd.uses_labels()
      and not getattr(s.task, "answers_are_inputs", False)):
    n_labeled = 0  # ground truth never enters the loss (alpha = 0, labels-only KD)
  tags, d = config.tags, config.data
  cache = getattr(s.task, "teacher_cache", None)  # a task's cached teacher outputs, if any
  speed_seconds = session_seconds - tr.compile_seconds
  result = {
      # A teacher in the loss or teacher-written answers as data; a teacher-cut control is neither.
      "kind": ("distill" if (s.kd is not None and s.kd.reads_teacher())
               or getattr(s.task, "generations", None) else "finetune"),
      "method": tags.method or f"finetune_{config.mask.rule}",
      "domain": tags.domain,
      "task": tags.task or "/".join(x for x in (d.name, d.config) if x),
      "series": tags.series, "label_fraction": d.label_fraction, "seed": config.seed,
      "config": json.loads(config.to_json()), "git_sha": tr.git_sha,
      "primary_metric": s.task.primary_metric,
      "metrics": {"test": test_metrics, "validation": val_metrics,
                  "best_validation": {"step": tr.best.best_step,
                                      s.task.primary_metric: tr.best.best_value}},
      "model": dataclasses.asdict(s.model_cfg), "model_family": config.model.family,
      "params_total": s.params_total, "params_trainable": s.params_trainable,
      "checkpoint_bytes": ckpt_bytes,
      **tr.flops.record(),  # step FLOPs × steps, teacher forward passes included
      "train_seconds": train_seconds, "wall_seconds": time.time() - t_start,
      "examples_seen": tr.examples_seen,
      # Steady-state speed of this session: steps that compiled (a new batch width) are left out;
      # logging and checkpoint starts are in, evaluation is not.
      "examples_per_second": (tr.speed_examples / speed_seconds if tr.speed_examples else None),
      "compile_seconds": tr.compile_seconds, "steps": tr.plan.total_steps,
      "labeled_examples": n_labeled,
      # Validation labels read to pick the best checkpoint (count them with the labeled data).
      "validation_labels": s.task.labeled_count("validation"),
      "init": _init(config),
      "unlabeled_examples": len(s.task.splits["train"]) - n_labeled,
      "teachers": list(distill.teacher_dirs(config)) if s.kd is not None else [],
      "teacher_cache": cache.meta if cache is not None else None,
      "generations": getattr(s.task, "generations", None),  # sequence-level KD's teacher answers
      "latency": {}, "is_teacher": bool(tags.is_teacher), "run_dir": workdir,
      "fingerprint": record_lib.fingerprint(config), "warnings": list(s.warnings),
  }
  if jax.process_index() == 0:
    record_lib.write_json(os.path.join(workdir, "result.json"), result)
  return result
