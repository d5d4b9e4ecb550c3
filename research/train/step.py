"""The train step: ONE pure per-device function `(state, batch, aux) -> (state, metrics)`.

The "jit" variant compiles it over a device mesh (batch sharded on axis "data", state replicated);
the "pmap" variant maps the same function over local devices with `lax.psum` on the gradients.

`loss_fn(params, batch, rng, aux) -> (loss, metrics)`: `aux` is an extra pytree (e.g. frozen
teacher params) that is never differentiated and never touches the optimizer.

Gradient accumulation splits the global batch of one optimizer step into `grad_accum`
micro-batches (rows j, j+A, j+2A, ... form micro-batch j, so every device keeps its own rows), so
`data.batch_size` is the number of examples per optimizer step for any `grad_accum`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax

from research import masking
from research.train.parallel import DATA_AXIS, PARALLEL, make_mesh, put_batch

PyTree = Any
Batch = Mapping[str, Any]
LossFn = Callable[[PyTree, Batch, jax.Array, PyTree], tuple[jax.Array, dict]]


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


def _weight(mb: Batch) -> jax.Array:
  # Micro-batches and devices are weighted by their real rows, so a valid-masked mean loss
  # gives the same gradient for any grad_accum / device split of one global batch.
  if "valid" in mb:
    return jnp.sum(mb["valid"].astype(jnp.float32))
  return jnp.asarray(jax.tree.leaves(mb)[0].shape[0], jnp.float32)


def _mean_grads(loss_of: Callable, train_p: PyTree, batch: Batch, rng: jax.Array,
                grad_accum: int, axis_name: str | None) -> tuple[PyTree, dict]:
  """Gradients and metrics averaged over micro-batches (and devices), weighted by valid rows."""
  def micro_grads(mb, key):
    grad_fn = jax.value_and_grad(lambda tp: loss_of(tp, mb, key), has_aux=True)
    (loss, metrics), grads = grad_fn(train_p)
    return grads, dict(metrics, loss=loss)

  if grad_accum == 1:
    grads, metrics = micro_grads(batch, rng)
    w = _weight(batch)
    grads, metrics = jax.tree.map(lambda x: x * w, (grads, metrics))
  else:
    micro = _micro_batches(batch, grad_accum)
    def body(acc, xs):
      i, mb = xs
      g, m = micro_grads(mb, jax.random.fold_in(rng, i))
      w_i = _weight(mb)
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
  return jax.tree.map(lambda x: x * inv_w, (grads, metrics))


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

  grads, metrics = _mean_grads(lambda tp, mb, key: loss_fn(join(tp), mb, key, aux), train_p,
                               batch, rng, grad_accum, axis_name)

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
      state, metrics = pmapped(state, put_batch(batch, "pmap", None), aux)
      return state, jax.tree.map(lambda m: m[0], metrics)
    return step

  mesh = mesh or make_mesh()
  repl = NamedSharding(mesh, P())
  jitted = jax.jit(fn, in_shardings=(repl, NamedSharding(mesh, P(DATA_AXIS)), repl),
                   out_shardings=(repl, repl), donate_argnums=(0,))
  def step(state, batch, aux=None):
    return jitted(state, put_batch(batch, "jit", mesh), aux)
  # For XLA's cost analysis of the step (`cost.step_flops(step, state, batch, aux)`).
  step.lower = lambda state, batch, aux=None: jitted.lower(state, put_batch(batch, "jit", mesh),
                                                           aux)
  step.num_devices = mesh.size
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
      out = pmapped(params, put_batch(batch, "pmap", None), aux)
      out = jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[2:]), out)
      return _gather_processes(out)
    return step

  mesh = mesh or make_mesh()
  repl = NamedSharding(mesh, P())
  jitted = jax.jit(predict_fn, in_shardings=(repl, NamedSharding(mesh, P(DATA_AXIS)), repl),
                   out_shardings=NamedSharding(mesh, P(DATA_AXIS)))
  def step(params, batch, aux=None):
    out = jitted(params, put_batch(batch, "jit", mesh), aux)
    if jax.process_count() == 1:
      return jax.device_get(out)
    return multihost_utils.process_allgather(out, tiled=True)
  return step


def _gather_processes(out: PyTree) -> PyTree:
  if jax.process_count() == 1:
    return out
  return multihost_utils.process_allgather(out, tiled=True)
