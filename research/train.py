"""Training: TrainState, optimizer/schedule, jit-mesh and pmap train/eval steps, fine-tuning loop.

The train step is ONE pure per-device function `(state, batch, aux) -> (state, metrics)`; the
"jit" variant compiles it over a device mesh (batch sharded on axis "data", state replicated) and
the "pmap" variant maps the same function over local devices with `lax.pmean` on the gradients.

`loss_fn(params, batch, rng, aux) -> (loss, metrics)`: `aux` is an extra pytree (e.g. frozen
teacher params) that is never differentiated and never touches the optimizer.

Gradient accumulation splits the global batch of one optimizer step into `grad_accum`
micro-batches (rows j, j+A, j+2A, ... form micro-batch j, so every device keeps its own rows), so
`data.batch_size` is the number of examples per optimizer step for any `grad_accum`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import time
from typing import Any, Callable, Mapping

import flax.struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax
from tqdm.auto import tqdm

from research import cost
from research import data as data_lib
from research import distill
from research import losses
from research import masking
from research import metrics as metrics_lib
from research.checkpoints import hf
from research.checkpoints import store as store_lib
from research.data import pipeline
from research.models import registry

PyTree = Any
Batch = Mapping[str, Any]
LossFn = Callable[[PyTree, Batch, jax.Array, PyTree], tuple[jax.Array, dict]]
PARALLEL = ("jit", "pmap")
SCHEDULES = ("linear", "cosine", "constant")
DATA_AXIS = "data"


@flax.struct.dataclass
class TrainState:
  """Everything a train step updates. Per-step randomness is fold_in(rng, step)."""
  step: jax.Array        # int32 scalar: optimizer steps taken
  params: PyTree         # float32
  opt_state: PyTree
  rng: jax.Array         # base PRNG key (constant over training)


def create_train_state(params: PyTree, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng)


# ---------------------------------------------------------------------------------------------
# Optimizer


def make_schedule(optim_cfg: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup (warmup_ratio of total_steps) then linear/cosine decay to 0, or constant."""
  if optim_cfg.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={optim_cfg.schedule!r}; use one of {SCHEDULES}.")
  lr = float(optim_cfg.lr)
  warmup = int(round(optim_cfg.warmup_ratio * total_steps))
  decay = max(total_steps - warmup, 1)
  warm = optax.linear_schedule(0.0, lr, max(warmup, 1))
  if optim_cfg.schedule == "linear":
    after = optax.linear_schedule(lr, 0.0, decay)
  elif optim_cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay)
  else:
    after = optax.constant_schedule(lr)
  if warmup == 0:
    return after
  return optax.join_schedules([warm, after], [warmup])


def make_optimizer(optim_cfg: Any, labels: PyTree,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (+ global-norm clipping) on trainable leaves, `set_to_zero` on frozen ones.

  Weight decay skips vectors (biases, LayerNorm). Frozen leaves carry no optimizer state.

  Returns:
    (tx, learning-rate schedule).
  """
  schedule = make_schedule(optim_cfg, total_steps)
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                           weight_decay=optim_cfg.weight_decay,
                           mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  tx = optax.multi_transform(
      {masking.TRAINABLE: optax.chain(*parts), masking.FROZEN: optax.set_to_zero()}, labels)
  return tx, schedule


# ---------------------------------------------------------------------------------------------
# Devices


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize` when the environment describes a multi-process job.

  Recognised: JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), or a SLURM/Open MPI
  job with more than one task (jax auto-detects those). Returns True when initialised here.
  """
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None,
        process_id=int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None)
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    jax.distributed.initialize()
    return True
  return False


def make_mesh(devices: Any = None) -> Mesh:
  """1-D mesh over all (global) devices with the batch axis "data"."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def place_state(state: PyTree, parallel: str, mesh: Mesh | None = None) -> PyTree:
  """Host/unplaced state -> replicated over the mesh (jit) or stacked over local devices (pmap)."""
  if parallel == "pmap":
    devices = jax.local_devices()
    stacked = NamedSharding(Mesh(np.asarray(devices), (DATA_AXIS,)), P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.device_put(jnp.stack([x] * len(devices)), stacked), state)
  mesh = mesh or make_mesh()
  return jax.device_put(state, NamedSharding(mesh, P()))


def unplace_state(state: PyTree, parallel: str) -> PyTree:
  """Inverse of `place_state` (one copy, still on device)."""
  if parallel == "pmap":
    return jax.tree.map(lambda x: x[0], state)
  return state


def _put_batch(batch: Batch, parallel: str, mesh: Mesh | None) -> Batch:
  """Process-local numpy batch -> global array sharded on "data" (jit) or [n_local, B/n, ...]."""
  if parallel == "pmap":
    n = jax.local_device_count()
    def stack(x):
      if x.shape[0] % n:
        raise ValueError(f"per-process batch {x.shape[0]} is not divisible by the {n} local "
                         f"devices; change data.batch_size / data.eval_batch_size.")
      return x.reshape(n, x.shape[0] // n, *x.shape[1:])
    return jax.tree.map(stack, dict(batch))
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  n = mesh.devices.size // jax.process_count()
  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if x.shape[0] % n:
      raise ValueError(f"per-process batch {x.shape[0]} is not divisible by the {n} local "
                       f"devices; change data.batch_size / data.eval_batch_size.")
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return jax.tree.map(put, dict(batch))


# ---------------------------------------------------------------------------------------------
# Steps


def _micro_batches(batch: Batch, grad_accum: int) -> Batch:
  """[B, ...] -> [A, B/A, ...] with micro-batch j = rows j, j+A, ... (keeps device locality)."""
  def split(x):
    if x.shape[0] % grad_accum:
      raise ValueError(f"batch of {x.shape[0]} rows per device is not divisible by "
                       f"optim.grad_accum={grad_accum}.")
    x = x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, dict(batch))


def _tree_norm(tree: PyTree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if x is not None]
  return optax.tree.norm(leaves) if leaves else jnp.zeros((), jnp.float32)


def train_step(state: TrainState, batch: Batch, aux: PyTree, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, grad_accum: int = 1,
               trainable: PyTree | None = None, learning_rate_fn: optax.Schedule | None = None,
               axis_name: str | None = None) -> tuple[TrainState, dict]:
  """The per-device train step (pure). Both parallel variants wrap this function.

  Args:
    state: TrainState (params float32).
    batch: dict of [B, ...] arrays (B = rows on this device under pmap, global under jit).
    aux: extra pytree for loss_fn, not differentiated.
    loss_fn: (params, batch, rng, aux) -> (scalar loss, dict of scalar metrics).
    tx: optimizer.
    grad_accum: micro-batches per optimizer step.
    trainable: label pytree ("trainable"/"frozen"); gradients are taken only for trainable
      leaves and frozen leaves are passed through untouched (bit-identical). None: all trainable.
    learning_rate_fn: schedule, only to log "lr".
    axis_name: pmap axis to average gradients/metrics over; None under jit.

  Returns:
    (new state, metrics: loss, grad_norm, param_norm, update_norm, lr, + loss_fn metrics).
  """
  aux = jax.lax.stop_gradient(aux)
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  if trainable is None:
    train_p, frozen_p = state.params, None
    join = lambda t: t
  else:
    train_p, frozen_p = masking.split(state.params, trainable)
    join = lambda t: masking.combine(t, frozen_p)

  def micro_grads(mb, key):
    grad_fn = jax.value_and_grad(lambda tp: loss_fn(join(tp), mb, key, aux), has_aux=True)
    (loss, metrics), grads = grad_fn(train_p)
    return grads, dict(metrics, loss=loss)

  def weight(mb):
    # Micro-batches and devices are weighted by their real rows, so a valid-masked mean loss
    # gives the same gradient for any grad_accum / device split of one global batch.
    if "valid" in mb:
      return jnp.sum(mb["valid"].astype(jnp.float32))
    return jnp.asarray(jax.tree.leaves(mb)[0].shape[0], jnp.float32)

  if grad_accum == 1:
    grads, metrics = micro_grads(batch, rng)
    w = weight(batch)
    grads, metrics = jax.tree.map(lambda x: x * w, (grads, metrics))
  else:
    micro = _micro_batches(batch, grad_accum)
    def body(acc, xs):
      i, mb = xs
      g, m = micro_grads(mb, jax.random.fold_in(rng, i))
      w_i = weight(mb)
      acc_g, acc_m, acc_w = acc
      acc_g = jax.tree.map(lambda a, x: a + w_i * x, acc_g, g)
      acc_m = jax.tree.map(lambda a, x: a + w_i * x, acc_m, m)
      return (acc_g, acc_m, acc_w + w_i), None
    zeros_g = jax.tree.map(jnp.zeros_like, train_p)
    m_shape = jax.eval_shape(lambda: micro_grads(jax.tree.map(lambda x: x[0], micro), rng)[1])
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
    (grads, metrics, w), _ = jax.lax.scan(body, (zeros_g, zeros_m, jnp.zeros((), jnp.float32)),
                                          (jnp.arange(grad_accum), micro))
  if axis_name is not None:
    grads, metrics, w = jax.lax.psum((grads, metrics, w), axis_name)
  inv_w = 1.0 / jnp.maximum(w, 1e-9)
  grads, metrics = jax.tree.map(lambda x: x * inv_w, (grads, metrics))

  if trainable is None:
    full_grads = grads
  else:  # frozen leaves see zeros (set_to_zero ignores them; XLA drops the computation)
    full_grads = masking.combine(grads, jax.tree.map(jnp.zeros_like, frozen_p))
  updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
  if trainable is None:
    params = optax.apply_updates(state.params, updates)
  else:  # rebuild from the untouched frozen leaves: p + 0 would flip -0.0
    new_train = optax.apply_updates(train_p, masking.split(updates, trainable)[0])
    params = masking.combine(new_train, frozen_p)
  metrics = dict(metrics)
  metrics["grad_norm"] = _tree_norm(grads)
  metrics["param_norm"] = _tree_norm(params)
  metrics["update_norm"] = _tree_norm(updates)
  if learning_rate_fn is not None:
    metrics["lr"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def make_train_step(loss_fn: LossFn, optimizer_tx: optax.GradientTransformation, *,
                    grad_accum: int = 1, parallel: str = "jit", mesh: Mesh | None = None,
                    trainable: PyTree | None = None,
                    learning_rate_fn: optax.Schedule | None = None) -> Callable:
  """Compiles `train_step` for the chosen parallel variant.

  Args:
    loss_fn: (params, batch, rng, aux) -> (loss, metrics).
    optimizer_tx: optimizer (e.g. from `make_optimizer`).
    grad_accum: micro-batches per optimizer step.
    parallel: "jit" (mesh, NamedSharding) or "pmap".
    mesh: jit only; default: all devices on axis "data".
    trainable: label pytree; see `train_step`.
    learning_rate_fn: schedule to log "lr".

  Returns:
    step(state, batch, aux=None) -> (state, metrics). `state` must be placed with `place_state`
    and is donated (arrays it shares with the caller, e.g. the params it was created from, are
    invalidated); `batch` is the process-local numpy batch [B_local, ...]; metrics are scalar
    device arrays.
  """
  if parallel not in PARALLEL:
    raise ValueError(f"train.parallel={parallel!r}; use one of {PARALLEL}.")
  if grad_accum < 1:
    raise ValueError(f"optim.grad_accum={grad_accum}; use >= 1.")
  fn = functools.partial(train_step, loss_fn=loss_fn, tx=optimizer_tx, grad_accum=grad_accum,
                         trainable=trainable, learning_rate_fn=learning_rate_fn)
  if parallel == "pmap":
    pmapped = jax.pmap(functools.partial(fn, axis_name=DATA_AXIS), axis_name=DATA_AXIS,
                       in_axes=(0, 0, None), donate_argnums=(0,))
    def step(state, batch, aux=None):
      state, metrics = pmapped(state, _put_batch(batch, "pmap", None), aux)
      return state, jax.tree.map(lambda m: m[0], metrics)
    return step

  mesh = mesh or make_mesh()
  repl = NamedSharding(mesh, P())
  jitted = jax.jit(fn, in_shardings=(repl, NamedSharding(mesh, P(DATA_AXIS)), repl),
                   out_shardings=(repl, repl), donate_argnums=(0,))
  def step(state, batch, aux=None):
    return jitted(state, _put_batch(batch, "jit", mesh), aux)
  # For XLA's cost analysis of the step (`cost.step_flops(step, state, batch, aux)`).
  step.lower = lambda state, batch, aux=None: jitted.lower(state, _put_batch(batch, "jit", mesh),
                                                           aux)
  step.num_devices = mesh.size
  return step


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


def _step_flops(step_fn: Callable, state: Any, batch: Batch, aux: Any, analytic: float,
                grad_accum: int) -> tuple[float, str]:
  """FLOPs of one train step from XLA's cost analysis, else `analytic` (with the source)."""
  if not hasattr(step_fn, "lower") or getattr(step_fn, "num_devices", 1) != 1:
    # pmap and multi-device programs report one device's share: use the analytic count.
    return analytic, cost.SOURCE_ANALYTIC
  # Without gradient accumulation (a scan XLA counts once) the step's only loops are dropout's PRNG.
  return cost.step_flops(step_fn, state, batch, aux, analytic=analytic,
                         ignore_loops=grad_accum == 1)


def make_eval_step(predict_fn: Callable[[PyTree, Batch, PyTree], PyTree], *,
                   parallel: str = "jit", mesh: Mesh | None = None) -> Callable:
  """Compiles a forward pass.

  Args:
    predict_fn: (params, batch, aux) -> pytree of per-example arrays [B, ...].
    parallel: "jit" or "pmap" (params placed as by `place_state`).
    mesh: jit only.

  Returns:
    eval_step(params, batch, aux=None) -> numpy pytree of [B_global, ...] on every process.
  """
  if parallel not in PARALLEL:
    raise ValueError(f"train.parallel={parallel!r}; use one of {PARALLEL}.")
  if parallel == "pmap":
    pmapped = jax.pmap(predict_fn, axis_name=DATA_AXIS, in_axes=(0, 0, None))
    def step(params, batch, aux=None):
      out = pmapped(params, _put_batch(batch, "pmap", None), aux)
      out = jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[2:]), out)
      return _gather_processes(out)
    return step

  mesh = mesh or make_mesh()
  repl = NamedSharding(mesh, P())
  jitted = jax.jit(predict_fn, in_shardings=(repl, NamedSharding(mesh, P(DATA_AXIS)), repl),
                   out_shardings=NamedSharding(mesh, P(DATA_AXIS)))
  def step(params, batch, aux=None):
    out = jitted(params, _put_batch(batch, "jit", mesh), aux)
    if jax.process_count() == 1:
      return jax.device_get(out)
    return multihost_utils.process_allgather(out, tiled=True)
  return step


def _gather_processes(out: PyTree) -> PyTree:
  if jax.process_count() == 1:
    return out
  return multihost_utils.process_allgather(out, tiled=True)


# ---------------------------------------------------------------------------------------------
# Classification loss / prediction built from a model's apply


def model_params(params: PyTree) -> dict:
  """The params the model itself uses: LoRA folded in, training-only extras (KD projections) off."""
  return {k: v for k, v in masking.merge_lora(params).items() if k != "kd_proj"}


def _apply(model: Any, params: PyTree, batch: Batch, *, deterministic: bool,
           rng: jax.Array | None = None) -> dict:
  rngs = None if deterministic else {"dropout": rng}
  return model.apply({"params": model_params(params)}, batch["input_ids"],
                     batch["attention_mask"], batch["token_type_ids"],
                     deterministic=deterministic, rngs=rngs)


def classification_loss_fn(model: Any, *, label_smoothing: float = 0.0,
                           multilabel: bool = False) -> LossFn:
  """loss_fn(params, batch, rng, aux) for fine-tuning a classifier (LoRA merged in the step).

  Single-label: CE with label smoothing over rows with valid=1 and label >= 0 (unlabeled rows
  carry -1). Multilabel: sigmoid BCE (research.losses).
  """
  def loss_fn(params, batch, rng, aux):
    del aux
    logits_BxC = _apply(model, params, batch, deterministic=False, rng=rng)["logits"]
    valid_B = batch.get("valid", jnp.ones(logits_BxC.shape[:1], jnp.float32))
    if multilabel:
      return losses.sigmoid_cross_entropy(logits_BxC=logits_BxC, labels_BxC=batch["label"],
                                          valid_B=valid_B, label_smoothing=label_smoothing)
    return losses.cross_entropy(logits_BxC=logits_BxC, labels_B=batch["label"], valid_B=valid_B,
                                label_smoothing=label_smoothing)
  return loss_fn


def classification_predict_fn(model: Any) -> Callable[[PyTree, Batch, PyTree], dict]:
  """predict_fn(params, batch, aux) -> {"logits": B×C f32} (deterministic)."""
  def predict_fn(params, batch, aux):
    del aux
    return {"logits": _apply(model, params, batch, deterministic=True)["logits"]}
  return predict_fn


# ---------------------------------------------------------------------------------------------
# The fine-tuning run: config -> run directory + result record

BEST_METRICS = ("accuracy", "macro_f1")
SYNTHETIC = "synthetic"


def check_config(config: Any) -> None:
  """Fails with a one-line message on config values that would break the run (before compute)."""
  t, o, d = config.train, config.optim, config.data
  if t.parallel not in PARALLEL:
    raise ValueError(f"train.parallel={t.parallel!r}; use one of {PARALLEL}.")
  if config.mask.rule not in masking.RULES:
    raise ValueError(f"mask.rule={config.mask.rule!r}; use one of {masking.RULES}.")
  if o.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={o.schedule!r}; use one of {SCHEDULES}.")
  if t.best_metric not in BEST_METRICS:
    raise ValueError(f"train.best_metric={t.best_metric!r}; use one of {BEST_METRICS}.")
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


def has_exported_params(run_dir: str | os.PathLike) -> bool:
  """True when a run directory holds exported best params (`load_run_params` will work)."""
  best = pathlib.Path(run_dir) / "best"
  return best.is_dir() and any(p.name.isdigit() for p in best.iterdir())


def load_run_params(run_dir: str | os.PathLike) -> tuple[dict, Any]:
  """Best-by-validation params of a finished (or running) fine-tuning run.

  Returns:
    (params as numpy float32 (LoRA merged), model config: the family's config class, e.g.
    EncoderConfig, with num_labels/pooling/dtype as trained).
  """
  params, meta = store_lib.load_best(run_dir)
  family = registry.get_family(meta["model"]["family"])
  return params, family.config_cls(**meta["model"]["config"])


def synthetic_split(n: int, *, num_classes: int, vocab_size: int, max_length: int,
                    seed: int) -> Any:
  """A learnable toy split (tests, smoke runs): class c draws most tokens from vocab band c."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, num_classes, n).astype(np.int32)
  lengths = rng.randint(max(2, max_length // 4), max_length + 1, n).astype(np.int32)
  band = max((vocab_size - 1) // num_classes, 1)
  ids = np.zeros((n, max_length), np.int32)
  for i in range(n):
    own = 1 + labels[i] * band + rng.randint(0, band, lengths[i])
    noise = rng.randint(1, vocab_size, lengths[i])
    ids[i, :lengths[i]] = np.where(rng.rand(lengths[i]) < 0.7, own, noise)
  return pipeline.TokenizedSplit(
      input_ids=ids, token_type_ids=np.zeros_like(ids), lengths=lengths, labels=labels,
      ids=tuple(f"synthetic-{seed}-{i}" for i in range(n)), pad_id=0)


def _load_data(config: Any, model_cfg: Any) -> tuple[dict, Any]:
  """Tokenized train/validation/test splits and the dataset summary."""
  d = config.data
  if d.name == SYNTHETIC:
    c = model_cfg.num_labels
    sizes = {"train": 256, "validation": 64, "test": 64}
    splits = {s: synthetic_split(n, num_classes=c, vocab_size=model_cfg.vocab_size,
                                 max_length=d.max_length, seed=config.seed * 10 + k)
              for k, (s, n) in enumerate(sizes.items())}
    info = dict(num_classes=c, label_names=tuple(f"class_{i}" for i in range(c)),
                multilabel=False, full_train_size=sizes["train"])
    return splits, info
  kw = dict(manual_dir=d.manual_dir or None, data_dir=d.data_dir or None)
  meta = data_lib.info(d.name, d.config or None, **kw)
  tok = str(hf.resolve_source(config.model.source))
  splits = {s: pipeline.load_tokenized(d.name, d.config or None, s, max_length=d.max_length,
                                       tokenizer_path=tok, **kw)
            for s in ("train", "validation", "test")}
  full_n = len(splits["train"])
  if d.label_fraction < 1.0:
    records = data_lib.load(d.name, d.config or None, "train", **kw)
    labeled, unlabeled = pipeline.label_fraction(records, d.label_fraction, config.seed)
    if d.keep_unlabeled:  # every input stays; the unlabeled rest only feeds distillation losses
      labels = np.array(splits["train"].labels, copy=True)
      labels[np.asarray(unlabeled, np.int64)] = -1
      splits["train"] = dataclasses.replace(splits["train"], labels=labels)
    else:
      splits["train"] = splits["train"].subset(labeled)
  info = dict(num_classes=meta.num_classes, label_names=tuple(meta.label_names),
              multilabel=meta.multilabel, full_train_size=full_n)
  return splits, info


def _select_layers(config: Any, params: PyTree, model_cfg: Any) -> tuple[PyTree, Any]:
  """Keeps config.model.layers (DistilBERT-style smaller model) when set."""
  layers = tuple(config.model.get("layers", ()) or ())
  if not layers:
    return params, model_cfg
  return distill.select_layers(params, model_cfg, layers)


def _abstract_model(config: Any) -> tuple[PyTree, Any]:
  """(params as ShapeDtypeStructs, model config) without reading weights or compiling."""
  box = {}
  def build(rng):
    _, params, cfg = registry.build_model(
        config.model.family, config.model.source or None, num_labels=2,
        dtype=config.model.dtype, pooling=config.model.pooling,
        overrides=config.model.overrides.to_dict(), random_init=True, rng=rng)
    params, box["cfg"] = _select_layers(config, params, cfg)
    return params
  params = jax.eval_shape(build, jax.random.PRNGKey(0))
  return params, box["cfg"]


def _num_labels(config: Any) -> int:
  if config.data.name == SYNTHETIC:
    return 4
  d = config.data
  return data_lib.info(d.name, d.config or None, manual_dir=d.manual_dir or None,
                       data_dir=d.data_dir or None).num_classes


def _labeled_count(split: Any) -> int:
  """Rows whose label is known (unlabeled rows carry -1; multilabel rows are all labeled)."""
  if split.labels is None:
    return 0
  labels = np.asarray(split.labels)
  return int((labels >= 0).sum()) if labels.ndim == 1 else len(split)


def git_sha() -> str:
  """The commit this code runs at ("-dirty" when tracked code has changes), "unknown" outside git."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True, timeout=10).stdout.strip()
    # Only code makes a run "-dirty"; results/ changes while a grid runs (its tables are rewritten).
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no",
                            "--", "research", "configs", "experiments", "pyproject.toml"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return sha + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


class _MetricsLog:
  """metrics.jsonl of a run (process 0 writes); on resume drops records past the resumed step."""

  def __init__(self, path: str, resume_step: int):
    self.path = path
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    kept = []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          line = line.strip()
          if line:
            try:
              rec = json.loads(line)
            except ValueError:  # a torn last line after a kill
              continue
            if rec.get("step", 0) <= resume_step and rec.get("split") != "test":
              kept.append(line)
    with open(path, "w") as f:
      f.writelines(l + "\n" for l in kept)

  def write(self, record: Mapping[str, Any]) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record, sort_keys=True, default=float) + "\n")


def _evaluate(eval_step: Callable, params: PyTree, split: Any, info: Mapping[str, Any],
              config: Any) -> dict:
  """Metrics of `params` on a tokenized split (every example once)."""
  logits, index = [], []
  for batch in pipeline.eval_batches(split, config.data.eval_batch_size, config.data.buckets,
                                     labeled=False, process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    out = eval_step(params, batch)
    keep = out["valid"] > 0
    logits.append(out["logits"][keep])
    index.append(out["index"][keep])
  logits_NxC, index_N = np.concatenate(logits), np.concatenate(index)
  return metrics_lib.classification_metrics(
      logits_NxC, split.labels[index_N], multilabel=info["multilabel"],
      label_names=info["label_names"])


def _finite(host_metrics: Mapping[str, Any]) -> bool:
  return all(np.isfinite(host_metrics[k]) for k in ("loss", "grad_norm", "param_norm")
             if k in host_metrics)


class _FlopCounter:
  """Training FLOPs of one run: the analytic count always, XLA's count of each compiled step.

  XLA's count (`cost_analysis()` of the train step, once per batch width; the teacher's forward is
  inside the step) is reported when every step had one, else the analytic count.
  """

  def __init__(self, config: Any, model_cfg: Any, kd: Any, position: Mapping[str, Any], *,
               resumed: bool):
    n_layers = model_cfg.num_layers
    lowest_trained = {"head_only": n_layers, "last_k": n_layers - config.mask.k}.get(
        config.mask.rule, 0)  # bitfit/lora/regex/full: gradients flow through every layer
    batch, accum = config.data.batch_size, config.optim.grad_accum
    self._student = lambda width: cost.analytic_encoder_flops(
        model_cfg, batch, width, True, trainable_from_layer=lowest_trained)
    self._teacher = ((lambda width: kd.teacher_forward_flops(batch, width)) if kd is not None
                     else (lambda width: 0.0))
    self._accum = accum
    self.student = float(position.get("train_flops", 0.0))   # analytic, student steps
    self.teacher = float(position.get("teacher_flops", 0.0))  # analytic, teacher forwards
    self.xla = float(position.get("train_flops_xla", 0.0))
    self.all_xla = bool(position.get("train_flops_all_xla", not resumed))
    self._by_width: dict[int, tuple[float, str]] = {}

  def add(self, step_fn: Callable, state: Any, batch: Batch, aux: Any) -> None:
    """Counts one step just taken (`state` is its output; the first of a width compiles)."""
    width = batch["input_ids"].shape[1]
    student, teacher = self._student(width), self._teacher(width)
    self.student += student
    self.teacher += teacher
    if width not in self._by_width:
      self._by_width[width] = _step_flops(step_fn, state, batch, aux, student + teacher,
                                          self._accum)
    flops, source = self._by_width[width]
    self.xla += flops
    self.all_xla = self.all_xla and source == cost.SOURCE_XLA

  def position(self) -> dict[str, Any]:
    """What a checkpoint keeps, so a resumed run continues the counts."""
    return {"train_flops": self.student, "teacher_flops": self.teacher,
            "train_flops_xla": self.xla, "train_flops_all_xla": self.all_xla}

  def record(self) -> dict[str, Any]:
    analytic = self.student + self.teacher
    return {"train_flops": self.xla if self.all_xla else analytic,
            "train_flops_source": cost.SOURCE_XLA if self.all_xla else cost.SOURCE_ANALYTIC,
            "train_flops_analytic": analytic, "teacher_flops": self.teacher}


def _build_model(config: Any, rng: jax.Array) -> tuple[Any, PyTree, Any, Any]:
  """(module, params, model config, distillation setup or None) for a run config."""
  if distill.is_distillation(config):
    kd = distill.build_setup(config, num_labels=_num_labels(config), rng=rng)
    return kd.model, kd.params, kd.model_cfg, kd
  model, params, model_cfg = registry.build_model(
      config.model.family, config.model.source or None, num_labels=_num_labels(config),
      dtype=config.model.dtype, pooling=config.model.pooling,
      overrides=config.model.overrides.to_dict(), random_init=config.model.random_init,
      rng=rng, dropout=config.model.dropout)
  built_layers = model_cfg.num_layers
  params, model_cfg = _select_layers(config, params, model_cfg)
  if model_cfg.num_layers != built_layers:  # model.layers kept fewer: rebuild the module
    model = registry.get_family(config.model.family).classifier(model_cfg)
  return model, params, model_cfg, None


def _open_store(config: Any, workdir: str, state: TrainState
                ) -> tuple[store_lib.CheckpointStore, TrainState, dict]:
  """The run's checkpoint store, and the state and data position to start from (resumed if any)."""
  store = store_lib.CheckpointStore(os.path.join(workdir, "checkpoints"),
                                    keep=config.train.keep_checkpoints,
                                    metadata={"config": json.loads(config.to_json())})
  position = {"epoch": 0, "step": 0, "examples_seen": 0, "train_seconds": 0.0}
  if store.latest_step() is None:
    return store, state, position
  saved = store.metadata().get("config", {})
  for section in ("model", "mask", "data"):
    if saved.get(section) is not None and saved[section] != json.loads(config[section].to_json()):
      raise ValueError(f"{workdir} holds a run with a different `{section}` config; use a new "
                       f"config.workdir (or delete {workdir}/checkpoints to restart).")
  state, position = store.restore(state)
  return store, state, position


def run(config: Any) -> dict:
  """Fine-tunes a classifier as `config` says; writes the run directory; returns the result record.

  Run directory (config.workdir): checkpoints/ (resumable, last N), best/ (best-by-validation
  params, see `load_run_params`), metrics.jsonl, result.json. Rerunning the same config resumes
  from the latest checkpoint with the exact next batch.

  Raises:
    ValueError: bad config values (before any compute).
    FloatingPointError: a non-finite loss/gradient/param norm; the last good checkpoint is kept.
  """
  t_start = time.time()
  check_config(config)
  maybe_initialize_distributed()
  enable_compile_cache(config.compile_cache_dir)
  workdir = os.path.abspath(config.workdir)
  os.makedirs(workdir, exist_ok=True)
  t, d = config.train, config.data
  parallel = t.parallel
  model_rng, mask_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)

  # The mask is checked on abstract params (shapes only): a bad rule fails before any compute.
  abstract, abstract_cfg = _abstract_model(config)
  masking.validate(abstract, config.mask, pooling=abstract_cfg.pooling)

  model, params, model_cfg, kd = _build_model(config, model_rng)  # kd: teachers, KD losses
  params, labels = masking.prepare(params, config.mask, mask_rng, pooling=model_cfg.pooling)
  counts = masking.count(params, labels)
  merged_counts = masking.count(model_params(params))

  splits, info = _load_data(config, model_cfg)
  train_split = splits["train"]
  steps_per_epoch = -(-len(train_split) // d.batch_size)
  # The step budget (and eval/checkpoint cadence) of an epoch: the full training set's when asked.
  budget_epoch = steps_per_epoch
  if t.get("steps_from_full_data", False):
    budget_epoch = -(-info["full_train_size"] // d.batch_size)
  total_steps = t.max_steps if t.max_steps > 0 else max(int(np.ceil(t.epochs * budget_epoch)), 1)
  eval_every = t.eval_every or budget_epoch
  ckpt_every = t.checkpoint_every or budget_epoch
  log_every = max(t.log_every, 1)

  tx, schedule = make_optimizer(config.optim, labels, total_steps)
  store, state, position = _open_store(config, workdir,
                                       create_train_state(params, tx, state_rng))
  start_step = int(state.step)
  log = _MetricsLog(os.path.join(workdir, "metrics.jsonl"), start_step)
  best = store_lib.BestExport(workdir, t.best_metric)

  mesh = make_mesh() if parallel == "jit" else None
  if kd is None:
    loss_fn = classification_loss_fn(model, label_smoothing=t.label_smoothing,
                                     multilabel=info["multilabel"])
    aux = None
  else:
    loss_fn = kd.loss_fn(config, multilabel=info["multilabel"])
    aux = jax.device_put(kd.aux)  # teachers: placed once, passed to every step, never trained
  base_predict = classification_predict_fn(model)
  predict_fn = lambda p, b, aux: dict(base_predict(p, b, aux), valid=b["valid"], index=b["index"])
  train_step_fn = make_train_step(loss_fn, tx, grad_accum=config.optim.grad_accum,
                                  parallel=parallel, mesh=mesh, trainable=labels,
                                  learning_rate_fn=schedule)
  eval_step = make_eval_step(predict_fn, parallel=parallel, mesh=mesh)
  state = place_state(state, parallel, mesh)
  it = pipeline.TrainIterator(train_split, d.batch_size, d.buckets, seed=config.seed,
                              epoch=position["epoch"], step=position["step"],
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
  model_meta = {"family": config.model.family, "config": dataclasses.asdict(model_cfg)}

  flops = _FlopCounter(config, model_cfg, kd, position, resumed=start_step > 0)
  examples_seen = int(position["examples_seen"])
  train_seconds = float(position["train_seconds"])
  window: list[dict] = []
  pending = None       # (step, device metrics) of the last step, checked one step late
  seen_widths: set[int] = set()
  compile_seconds = 0.0    # steps with a new batch shape (compilation), excluded from the speed
  speed_examples = 0       # examples of the other steps of this session

  def check_pending():
    nonlocal pending
    if pending is None:
      return
    step_no, dev = pending
    host = {k: float(v) for k, v in jax.device_get(dev).items()}
    pending = None
    if not _finite(host):
      store.wait()
      last = store.latest_step()
      log.write({"step": step_no, "split": "train", "event": "nonfinite", **host})
      raise FloatingPointError(
          f"non-finite training values at step {step_no} (loss={host.get('loss')}, "
          f"grad_norm={host.get('grad_norm')}, param_norm={host.get('param_norm')}); stopped. "
          f"Last good checkpoint: step {last} in {store.directory}. Lower optim.lr or check the "
          f"data.")
    window.append(host)

  bar = tqdm(total=total_steps, initial=start_step, desc=config.name, unit="step",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  step = start_step
  t_loop = time.time()
  while step < total_steps:
    batch = next(it)
    width = batch["input_ids"].shape[1]
    new_width = width not in seen_widths
    if new_width:
      jax.block_until_ready(state)
      t_compile = time.time()
    state, metrics = train_step_fn(state, batch, aux)
    if new_width:
      seen_widths.add(width)
      jax.block_until_ready(metrics)
      compile_seconds += time.time() - t_compile
    else:
      speed_examples += d.batch_size
    t_count = time.time()
    flops.add(train_step_fn, state, batch, aux)
    t_loop += time.time() - t_count  # counting FLOPs (a lowering per new width) is not training
    step += 1
    examples_seen += int(batch["valid"].sum()) * jax.process_count()
    check_pending()
    pending = (step, metrics)
    boundary = step % eval_every == 0 or step % ckpt_every == 0 or step == total_steps
    if step % log_every == 0 or boundary:
      check_pending()
      mean = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
      window.clear()
      log.write({"step": step, "split": "train", "epoch": step / steps_per_epoch,
                 "examples_seen": examples_seen, **mean})
      bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{mean.get('lr', 0):.2e}")
    if step % eval_every == 0 or step == total_steps:
      t_eval = time.time()
      params_now = unplace_state(state, parallel).params
      val = _evaluate(eval_step, state.params, splits["validation"], info, config)
      log.write({"step": step, "split": "validation",
                 **{k: v for k, v in val.items() if k != "per_class"}})
      best.update(step, val, jax.device_get(model_params(params_now)), model_meta)
      t_loop += time.time() - t_eval  # evaluation is not training time
    if step % ckpt_every == 0 or step == total_steps:
      pos = dict(it.position, examples_seen=examples_seen, **flops.position(),
                 train_seconds=train_seconds + time.time() - t_loop)
      store.save(step, unplace_state(state, parallel), pos)
    bar.update(1)
  bar.close()
  check_pending()
  session_seconds = time.time() - t_loop
  train_seconds += session_seconds
  store.wait()
  best.wait()

  # Validation and test metrics of the best-by-validation params.
  best_params, _ = store_lib.load_best(workdir)
  best_placed = place_state(best_params, parallel, mesh)
  val_metrics = _evaluate(eval_step, best_placed, splits["validation"], info, config)
  test_metrics = _evaluate(eval_step, best_placed, splits["test"], info, config)
  log.write({"step": step, "split": "test",
             **{k: v for k, v in test_metrics.items() if k != "per_class"}})
  if jax.process_index() == 0:  # the best params as an HF folder too (config.json + safetensors)
    hf.save_hf(best_params, model_cfg, workdir, family=config.model.family)
  hf_file = os.path.join(workdir, "model.safetensors")
  ckpt_bytes = (cost.checkpoint_bytes(hf_file) if os.path.exists(hf_file)
                else masking.count(best_params)["bytes_total"])
  tags = config.tags
  n_labeled = _labeled_count(train_split)
  if kd is not None and not kd.uses_labels():
    n_labeled = 0  # ground truth never enters the loss (alpha = 0, labels-only KD)
  result = {
      "kind": "finetune" if kd is None else "distill",
      "method": tags.method or f"finetune_{config.mask.rule}",
      "domain": tags.domain,
      "task": tags.task or "/".join(x for x in (d.name, d.config) if x),
      "series": tags.series,
      "label_fraction": d.label_fraction,
      "seed": config.seed,
      "config": json.loads(config.to_json()),
      "git_sha": git_sha(),
      "metrics": {"test": test_metrics, "validation": val_metrics,
                  "best_validation": {"step": best.best_step, t.best_metric: best.best_value}},
      "model": dataclasses.asdict(model_cfg),
      "params_total": merged_counts["params_total"],
      "params_trainable": counts["params_trainable"],
      "checkpoint_bytes": ckpt_bytes,
      # Step FLOPs × steps, teacher forward passes included (see _FlopCounter).
      **flops.record(),
      "train_seconds": train_seconds,
      "wall_seconds": time.time() - t_start,
      "examples_seen": examples_seen,
      # Steady-state speed of this session: steps that compiled (a new batch width) are left out;
      # logging and checkpoint starts are in, evaluation is not.
      "examples_per_second": (speed_examples / (session_seconds - compile_seconds)
                              if speed_examples else None),
      "compile_seconds": compile_seconds,
      "steps": total_steps,
      "labeled_examples": n_labeled,
      "unlabeled_examples": len(train_split) - n_labeled,
      "teachers": list(distill.teacher_dirs(config)) if kd is not None else [],
      "latency": {},
      "is_teacher": bool(tags.is_teacher),
      "run_dir": workdir,
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump(result, f, indent=1, sort_keys=True, default=float)
  store.close()
  best.close()
  return result
