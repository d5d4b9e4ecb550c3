"""What a run trains, from its config: checks, the model (or distillation student), mask, task."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from research import distill
from research import masking
from research import tasks as tasks_lib
from research.models import registry
from research.train.optim import SCHEDULES
from research.train.parallel import PARALLEL

PyTree = Any


def check_config(config: Any) -> None:
  """Fails with a one-line message on config values that would break the run (before compute)."""
  t, o, d = config.train, config.optim, config.data
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
  masking.validate(abstract, config.mask, layout=family.layout(abstract_cfg))
  task_kind = tasks_lib.get(config.task)
  model, params, model_cfg, kd = _model(config, task_kind.num_outputs(config), model_rng)
  params, labels = masking.prepare(params, config.mask, mask_rng, layout=family.layout(model_cfg))
  task = task_kind.build(config, model_cfg)
  # Counted now: the train step donates (deletes) these arrays.
  total = masking.count(masking.model_params(params))["params_total"]
  trainable = masking.count(params, labels)["params_trainable"]
  return RunSetup(family=family, model=model, model_cfg=model_cfg, params=params, labels=labels,
                  task=task, kd=kd, params_total=total, params_trainable=trainable)
