"""What a run trains, from its config: checks, the model (or distillation student), mask, task."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from research import distill
from research import masking
from research import tasks as tasks_lib
from research.models import registry
from research.train.optim import SCHEDULES
from research.train.parallel import PARALLEL

PyTree = Any


DTYPES = ("float32", "bfloat16")
POOLINGS = ("cls", "mean", "pooler")
STUDENT_INITS = ("layers", "fresh")


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_values(config: Any) -> None:
  """Ranges and enum values of the whole config; each message names the field."""
  t, o, d, m = config.train, config.optim, config.data, config.model
  def need(ok: bool, field: str, value: Any, want: str) -> None:
    if not ok:
      raise ValueError(f"{field}={value!r}; {want}.")
  need(_is_number(o.lr) and o.lr > 0, "optim.lr", o.lr, "use a learning rate > 0")
  need(_is_number(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay,
       "use a value >= 0")
  need(_is_number(o.warmup_ratio) and 0 <= o.warmup_ratio < 1, "optim.warmup_ratio",
       o.warmup_ratio, "use a value in [0, 1)")
  need(_is_number(o.grad_clip) and o.grad_clip >= 0, "optim.grad_clip", o.grad_clip,
       "use a value >= 0 (0 = no clipping)")
  for name in ("b1", "b2"):
    need(_is_number(o[name]) and 0 <= o[name] < 1, f"optim.{name}", o[name],
         "use a value in [0, 1)")
  need(isinstance(d.batch_size, int) and d.batch_size >= 1, "data.batch_size", d.batch_size,
       "use >= 1")
  need(isinstance(d.eval_batch_size, int) and d.eval_batch_size >= 1, "data.eval_batch_size",
       d.eval_batch_size, "use >= 1")
  need(isinstance(d.max_length, int) and d.max_length > 0, "data.max_length", d.max_length,
       "use a length > 0 (tokens)")
  buckets = tuple(d.buckets)
  bad = [b for b in buckets if not isinstance(b, int) or not 0 < b <= d.max_length]
  need(not bad, "data.buckets", buckets,
       f"every bucket must be in 1..data.max_length={d.max_length} (bad: {bad})")
  need(m.dtype in DTYPES, "model.dtype", m.dtype, f"use one of {DTYPES}")
  need(m.pooling in POOLINGS, "model.pooling", m.pooling, f"use one of {POOLINGS}")
  need(_is_number(m.dropout) and 0 <= m.dropout < 1, "model.dropout", m.dropout,
       "use a value in [0, 1)")
  try:
    registry.get_family(m.family)
  except KeyError as e:
    raise ValueError(f"model.family={m.family!r}; {e.args[0]}") from None
  need(config.distill.student_init in STUDENT_INITS, "distill.student_init",
       config.distill.student_init, f"use one of {STUDENT_INITS}")
  need(_is_number(config.distill.temperature) and config.distill.temperature > 0,
       "distill.temperature", config.distill.temperature, "use a temperature > 0")
  dd = config.distill
  need(_is_number(dd.get("beta", 0.5)) and 0 < dd.get("beta", 0.5) < 1, "distill.beta",
       dd.get("beta"), "use a value in (0, 1)")
  need(_is_number(dd.get("on_policy", 0.0)) and 0 <= dd.get("on_policy", 0.0) <= 1,
       "distill.on_policy", dd.get("on_policy"), "use a share in [0, 1]")
  need(_is_number(dd.get("sample_temperature", 1.0)) and dd.get("sample_temperature", 1.0) > 0,
       "distill.sample_temperature", dd.get("sample_temperature"), "use a temperature > 0")
  for f in ("vocab_chunk", "cache_top_k"):
    need(isinstance(dd.get(f, 0), int) and dd.get(f, 0) >= 0, f"distill.{f}", dd.get(f),
         "use an integer >= 0")
  need(isinstance(t.keep_checkpoints, int) and t.keep_checkpoints >= 1, "train.keep_checkpoints",
       t.keep_checkpoints, "keep at least 1")
  need(_is_number(t.epochs), "train.epochs", t.epochs, "use a number of epochs")
  need(isinstance(t.max_steps, int), "train.max_steps", t.max_steps, "use a step count")


def check_model_fit(config: Any, model_cfg: Any) -> None:
  """Data settings the model must accommodate (checked on the abstract model, before compute)."""
  positions = getattr(model_cfg, "max_position_embeddings", None)
  if positions is not None and config.data.max_length > positions:
    raise ValueError(f"data.max_length={config.data.max_length} exceeds the model's "
                     f"{positions} positions (max_position_embeddings); use <= {positions}.")


def _check_fsdp(t: Any, n_dev: int) -> None:
  fsdp = t.get("fsdp", 1)
  if not isinstance(fsdp, int) or isinstance(fsdp, bool) or fsdp < 1:
    raise ValueError(f"train.fsdp={fsdp!r}; use a device count >= 1 (1 = replicated params).")
  if fsdp > 1 and t.parallel != "jit":
    raise ValueError(f"train.fsdp={fsdp} needs train.parallel='jit' (pmap replicates params).")
  if n_dev % fsdp:
    raise ValueError(f"train.fsdp={fsdp} must divide the {n_dev} devices.")


def check_config(config: Any) -> None:
  """Fails with a one-line message on config values that would break the run (before compute)."""
  t, o, d = config.train, config.optim, config.data
  tasks_lib.get(config.task)
  _check_values(config)
  metrics = getattr(tasks_lib.get(config.task), "METRICS", ())
  if metrics and t.best_metric not in metrics:
    raise ValueError(f"train.best_metric={t.best_metric!r}; use one of {metrics}.")
  if t.parallel not in PARALLEL:
    raise ValueError(f"train.parallel={t.parallel!r}; use one of {PARALLEL}.")
  if config.mask.rule not in masking.RULES:
    raise ValueError(f"mask.rule={config.mask.rule!r}; use one of {masking.RULES}.")
  if o.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={o.schedule!r}; use one of {SCHEDULES}.")
  if not 0.0 <= t.label_smoothing < 1.0:
    raise ValueError(f"train.label_smoothing={t.label_smoothing}; use a value in [0, 1).")
  if t.max_steps <= 0 and t.epochs <= 0:
    raise ValueError("train.epochs and train.max_steps are both <= 0; set one of them.")
  if o.grad_accum < 1:
    raise ValueError(f"optim.grad_accum={o.grad_accum}; use >= 1.")
  n_dev = jax.device_count()
  _check_fsdp(t, n_dev)
  if d.batch_size % (o.grad_accum * n_dev):
    raise ValueError(f"data.batch_size={d.batch_size} must be divisible by optim.grad_accum × "
                     f"devices = {o.grad_accum} × {n_dev}.")
  if d.eval_batch_size % n_dev:
    raise ValueError(f"data.eval_batch_size={d.eval_batch_size} must be divisible by the {n_dev} "
                     f"devices.")
  if not 0.0 < d.label_fraction <= 1.0:
    raise ValueError(f"data.label_fraction={d.label_fraction}; use a value in (0, 1].")
  for name in ("log_every", "eval_every", "checkpoint_every"):
    if t[name] < 0:
      raise ValueError(f"train.{name}={t[name]} is negative; use 0 (default) or a step count.")


@dataclasses.dataclass
class RunSetup:
  """The trained model of a run and what surrounds it (see `build`)."""
  family: registry.Family
  model: Any                 # the module
  model_cfg: Any
  params: PyTree             # + LoRA adapters / KD projections when the run has them
  labels: PyTree             # mask: "trainable" / "frozen" per leaf
  task: Any                  # research/tasks protocol
  kd: distill.DistillSetup | None
  params_total: int          # of the model itself (LoRA merged, KD projections off)
  params_trainable: int
  warnings: list[str] = dataclasses.field(default_factory=list)  # data oddities, in the record

  @property
  def apply(self):
    return self.family.bind(self.model)


def _select_layers(config: Any, params: PyTree, model_cfg: Any) -> tuple[PyTree, Any]:
  """Keeps config.model.layers (DistilBERT-style smaller model) when set."""
  layers = tuple(config.model.get("layers", ()) or ())
  if not layers:
    return params, model_cfg
  return distill.select_layers(params, model_cfg, layers, family=config.model.family)


def _build_kw(config: Any) -> dict:
  m = config.model
  return dict(dtype=m.dtype, pooling=m.pooling, overrides=m.overrides.to_dict())


def abstract_model(config: Any) -> tuple[PyTree, Any]:
  """(params as ShapeDtypeStructs, model config) without reading weights or compiling."""
  box = {}
  def build(rng):
    _, params, cfg = registry.build_model(config.model.family, config.model.source or None,
                                          num_labels=2, random_init=True, rng=rng,
                                          **_build_kw(config))
    params, box["cfg"] = _select_layers(config, params, cfg)
    return params
  params = jax.eval_shape(build, jax.random.PRNGKey(0))
  return params, box["cfg"]


def _model(config: Any, num_outputs: int, rng: jax.Array):
  """(module, params, model config, distillation setup or None) for a run config."""
  if distill.is_distillation(config):
    kd = distill.build_setup(config, num_labels=num_outputs, rng=rng)
    return kd.model, kd.params, kd.model_cfg, kd
  family = registry.get_family(config.model.family)
  model, params, model_cfg = registry.build_model(
      config.model.family, config.model.source or None, num_labels=num_outputs,
      random_init=config.model.random_init, rng=rng, dropout=config.model.dropout,
      **_build_kw(config))
  built_layers = model_cfg.num_layers
  params, model_cfg = _select_layers(config, params, model_cfg)
  if model_cfg.num_layers != built_layers:  # model.layers kept fewer: rebuild the module
    model = family.classifier(model_cfg)
  return model, params, model_cfg, None


def build(config: Any, model_rng: jax.Array, mask_rng: jax.Array) -> RunSetup:
  """Checks the mask on abstract params first (a bad rule fails before any compute), then builds."""
  family = registry.get_family(config.model.family)
  abstract, abstract_cfg = abstract_model(config)
  check_model_fit(config, abstract_cfg)
  masking.validate(abstract, config.mask, layout=family.layout(abstract_cfg))
  task_kind = tasks_lib.get(config.task)
  num_outputs = task_kind.num_outputs(config)
  if config.task == "classification" and num_outputs < 2:
    raise ValueError(f"dataset {_dataset(config)} has {num_outputs} class(es); classification "
                     "needs at least 2 (check the label column).")
  model, params, model_cfg, kd = _model(config, num_outputs, model_rng)
  params, labels = masking.prepare(params, config.mask, mask_rng, layout=family.layout(model_cfg))
  task = task_kind.build(config, model_cfg)
  check_vocab(config, task, model_cfg)
  warnings = check_data(task) if config.task == "classification" else []
  # Counted now: the train step donates (deletes) these arrays.
  total = masking.count(masking.model_params(params))["params_total"]
  trainable = masking.count(params, labels)["params_trainable"]
  return RunSetup(family=family, model=model, model_cfg=model_cfg, params=params, labels=labels,
                  task=task, kd=kd, params_total=total, params_trainable=trainable,
                  warnings=warnings)


def _dataset(config: Any) -> str:
  return "/".join(x for x in (config.data.name, config.data.config) if x)


def check_vocab(config: Any, task: Any, model_cfg: Any) -> None:
  """Token ids of the data must index the model's embedding table (else NaNs or garbage)."""
  vocab = getattr(model_cfg, "vocab_size", None)
  if vocab is None:
    return
  top = max((int(np.max(s.input_ids)) for s in task.splits.values()
             if getattr(s, "input_ids", None) is not None and s.input_ids.size), default=-1)
  if top >= vocab:
    raise ValueError(f"the tokenizer gives token id {top} but the model's vocab_size is {vocab} "
                     f"(model.overrides.vocab_size={config.model.overrides.get('vocab_size', 0)}); "
                     f"use vocab_size >= {top + 1} (the tokenizer's size) or drop the override.")


MIN_EVAL_EXAMPLES = 20  # fewer, and one example moves accuracy by more than 5 points


def check_data(task: Any) -> list[str]:
  """Warnings about a classification task's data that make its metrics misleading."""
  names = tuple(getattr(task, "label_names", ()) or ())
  if not names:
    return []
  out = []
  groups: dict[str, list[str]] = {}
  for n in names:
    groups.setdefault(" ".join(str(n).split()).casefold(), []).append(str(n))
  dups = [g for g in groups.values() if len(g) > 1]
  if dups:
    out.append(f"labels that differ only in case or whitespace are separate classes: {dups}; "
               "fix the label column if they mean the same class")
  for split, data in task.splits.items():
    n = len(data)
    if split != "train" and n < MIN_EVAL_EXAMPLES:
      out.append(f"the {split} split has only {n} example(s): one example moves its accuracy by "
                 f"{100 / max(n, 1):.0f} points")
    labels = getattr(data, "labels", None)
    if labels is None:
      continue
    labels = np.asarray(labels)
    if labels.ndim == 1:
      counts = np.bincount(labels[labels >= 0], minlength=len(names))
    else:
      counts = labels.sum(0)
    absent = [names[i] for i in range(len(names)) if counts[i] == 0]
    if absent:
      out.append(f"the {split} split has no example of class(es) {absent[:10]}"
                 f"{f' (+{len(absent) - 10} more)' if len(absent) > 10 else ''}")
  return out
