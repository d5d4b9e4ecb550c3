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

import functools
import os
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research import masking

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
    return jax.device_put_replicated(state, devices)
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

  if grad_accum == 1:
    grads, metrics = micro_grads(batch, rng)
  else:
    micro = _micro_batches(batch, grad_accum)
    def body(acc, xs):
      i, mb = xs
      g, m = micro_grads(mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, acc, g), m
    zeros = jax.tree.map(jnp.zeros_like, train_p)
    grads, metrics = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
    grads = jax.tree.map(lambda g: g / grad_accum, grads)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
  if axis_name is not None:
    grads, metrics = jax.lax.pmean((grads, metrics), axis_name)

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
    (it is donated); `batch` is the process-local numpy batch [B_local, ...]; metrics are scalar
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
  return step


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
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(out, tiled=True)
  return step


def _gather_processes(out: PyTree) -> PyTree:
  if jax.process_count() == 1:
    return out
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(out, tiled=True)


# ---------------------------------------------------------------------------------------------
# Classification loss / prediction built from a model's apply


def _cross_entropy(*, logits_BxC: jax.Array, labels_B: jax.Array, valid_B: jax.Array,
                   label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
  """Valid-masked mean softmax CE with label smoothing (f32). Labels < 0 count as invalid.

  Private stand-in for `research.losses.cross_entropy` (same keyword signature).
  """
  c = logits_BxC.shape[-1]
  valid_B = valid_B.astype(jnp.float32) * (labels_B >= 0)
  onehot_BxC = jax.nn.one_hot(jnp.maximum(labels_B, 0), c, dtype=jnp.float32)
  if label_smoothing:
    onehot_BxC = onehot_BxC * (1.0 - label_smoothing) + label_smoothing / c
  logp_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32), axis=-1)
  ce_B = -jnp.sum(onehot_BxC * logp_BxC, axis=-1)
  denom = jnp.maximum(valid_B.sum(), 1.0)
  loss = jnp.sum(ce_B * valid_B) / denom
  acc = jnp.sum((logits_BxC.argmax(-1) == labels_B) * valid_B) / denom
  return loss, {"accuracy": acc}


def _binary_cross_entropy(*, logits_BxC: jax.Array, labels_BxC: jax.Array,
                          valid_B: jax.Array) -> tuple[jax.Array, dict]:
  """Multilabel sigmoid BCE, mean over classes and valid rows (f32)."""
  logits_BxC = logits_BxC.astype(jnp.float32)
  labels_BxC = labels_BxC.astype(jnp.float32)
  valid_B = valid_B.astype(jnp.float32)
  bce_B = optax.sigmoid_binary_cross_entropy(logits_BxC, labels_BxC).mean(-1)
  denom = jnp.maximum(valid_B.sum(), 1.0)
  exact_B = jnp.all((logits_BxC > 0) == (labels_BxC > 0.5), axis=-1)
  return jnp.sum(bce_B * valid_B) / denom, {"accuracy": jnp.sum(exact_B * valid_B) / denom}


def _apply(model: Any, params: PyTree, batch: Batch, *, deterministic: bool,
           rng: jax.Array | None = None) -> dict:
  rngs = None if deterministic else {"dropout": rng}
  return model.apply({"params": masking.merge_lora(params)}, batch["input_ids"],
                     batch["attention_mask"], batch["token_type_ids"],
                     deterministic=deterministic, rngs=rngs)


def classification_loss_fn(model: Any, *, label_smoothing: float = 0.0,
                           multilabel: bool = False) -> LossFn:
  """loss_fn(params, batch, rng, aux) for fine-tuning a classifier (LoRA merged in the step).

  Single-label: CE with label smoothing over rows with valid=1 and label >= 0 (unlabeled rows
  carry -1). Multilabel: sigmoid BCE over rows with valid=1.
  """
  def loss_fn(params, batch, rng, aux):
    del aux
    logits_BxC = _apply(model, params, batch, deterministic=False, rng=rng)["logits"]
    valid_B = batch.get("valid", jnp.ones(logits_BxC.shape[:1], jnp.float32))
    if multilabel:
      return _binary_cross_entropy(logits_BxC=logits_BxC, labels_BxC=batch["label"],
                                   valid_B=valid_B)
    return _cross_entropy(logits_BxC=logits_BxC, labels_B=batch["label"], valid_B=valid_B,
                          label_smoothing=label_smoothing)
  return loss_fn


def classification_predict_fn(model: Any) -> Callable[[PyTree, Batch, PyTree], dict]:
  """predict_fn(params, batch, aux) -> {"logits": B×C f32} (deterministic)."""
  def predict_fn(params, batch, aux):
    del aux
    return {"logits": _apply(model, params, batch, deterministic=True)["logits"]}
  return predict_fn
