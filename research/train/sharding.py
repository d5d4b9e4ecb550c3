"""Parameter sharding over the ("data", "fsdp") mesh: rules, placement, the sharded jit step.

Rules are pure functions of a leaf's '/'-joined path and shape -> PartitionSpec. A 2-D+ kernel or
embedding with at least `MIN_ELEMENTS` entries is split over "fsdp" on its largest dimension that
`fsdp` divides; everything else (biases, norms, scalars, small matrices) is replicated. The same
rule applied to the whole TrainState shards the optimizer moments like their params (Adam's mu /
nu paths end in the param path and have its shape), so each device holds 1/fsdp of the big leaves.

The step is the same pure `train.step.train_step`, compiled with jit: XLA (GSPMD) inserts the
all-gathers / reduce-scatters, so the result equals replicated training up to float reassociation.
Batch rows are split over both mesh axes (`parallel.batch_spec`).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Sequence

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import optax

from research.train import parallel
from research.train import step as step_lib

PyTree = Any
FSDP_AXIS = parallel.FSDP_AXIS
# Smaller leaves stay replicated: their all-gather costs more latency than their memory is worth.
MIN_ELEMENTS = 1024
SHARDED = r"(^|/)(kernel|embedding)$"   # dense kernels, token/position embeddings (+ their moments)


def leaf_spec(path: str, shape: Sequence[int], fsdp: int, *, min_elements: int = MIN_ELEMENTS,
              pattern: str = SHARDED) -> P:
  """PartitionSpec of one leaf: its largest `fsdp`-divisible dim on "fsdp", else replicated.

  Args:
    path: '/'-joined pytree path, e.g. "encoder/layer_0/attn/query/kernel".
    shape: the leaf's shape.
    fsdp: size of the "fsdp" mesh axis (1: everything replicated).
    min_elements: leaves with fewer entries stay replicated.
    pattern: regex (searched in `path`) of the leaves that may be sharded.
  """
  shape = tuple(int(d) for d in shape)
  size = 1
  for d in shape:
    size *= d
  if fsdp == 1 or len(shape) < 2 or size < min_elements or not re.search(pattern, path):
    return P()
  dims = [i for i in range(len(shape)) if shape[i] % fsdp == 0]
  if not dims:
    return P()
  axis = max(dims, key=lambda i: (shape[i], -i))  # ties: the first such dim
  return P(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_str(key_path: Sequence[Any]) -> str:
  """A jax key path -> "a/b/0/c" (dict keys, dataclass fields, tuple indices)."""
  return "/".join(_key_name(k) for k in key_path)


def tree_specs(tree: PyTree, fsdp: int, **kw: Any) -> PyTree:
  """`leaf_spec` of every leaf (arrays, ShapeDtypeStructs or tracers) of `tree`."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: leaf_spec(path_str(kp), x.shape, fsdp, **kw), tree)


def fsdp_size(mesh: Mesh) -> int:
  return int(mesh.shape.get(FSDP_AXIS, 1))


def tree_shardings(tree: PyTree, mesh: Mesh, **kw: Any) -> PyTree:
  """NamedShardings over `mesh` of every leaf of `tree` (the rules at the mesh's fsdp size)."""
  specs = tree_specs(tree, fsdp_size(mesh), **kw)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def place(tree: PyTree, mesh: Mesh) -> PyTree:
  """Host (or replicated) arrays -> placed by the rules; only this process's shards are copied."""
  shardings = tree_shardings(tree, mesh)
  def put(x, s):
    if isinstance(x, jax.Array) and x.sharding == s:
      return x
    if jax.process_count() == 1:
      return jax.device_put(x, s)
    # Every process holds the whole leaf: each keeps the slices of its own devices.
    return jax.make_array_from_callback(x.shape, s, lambda idx, x=x: jax.device_get(x[idx]))
  return jax.tree.map(put, tree, shardings)


def _constrain(tree: PyTree, mesh: Mesh) -> PyTree:
  return jax.lax.with_sharding_constraint(tree, tree_shardings(tree, mesh))


def make_train_step(loss_fn: Callable, optimizer_tx: optax.GradientTransformation, *, mesh: Mesh,
                    grad_accum: int = 1, trainable: PyTree | None = None,
                    learning_rate_fn: optax.Schedule | None = None) -> Callable:
  """`step.train_step` compiled over a ("data", "fsdp") mesh with the params sharded by the rules.

  Same contract as `step.make_train_step(parallel="jit")`: step(state, batch, aux=None) ->
  (state, metrics), `state` placed (here with `place`) and donated, `batch` process-local numpy,
  `aux` placed with `place` too (a teacher larger than one device stays sharded).
  """
  fn = functools.partial(step_lib.train_step, loss_fn=loss_fn, tx=optimizer_tx,
                         grad_accum=grad_accum, trainable=trainable,
                         learning_rate_fn=learning_rate_fn)
  repl = NamedSharding(mesh, P())
  def sharded(state, batch, aux):
    # Input shardings come from the placed arguments; the new state keeps the same layout
    # (so donation reuses the buffers) and metrics are replicated for every host to read.
    new_state, metrics = fn(state, batch, aux)
    return _constrain(new_state, mesh), jax.lax.with_sharding_constraint(metrics, repl)
  jitted = jax.jit(sharded, donate_argnums=(0,))
  def step(state, batch, aux=None):
    return jitted(state, parallel.put_batch(batch, "jit", mesh), aux)
  step.lower = lambda state, batch, aux=None: jitted.lower(
      state, parallel.put_batch(batch, "jit", mesh), aux)
  step.num_devices = mesh.size  # XLA's cost analysis would count one device's share
  return step


def make_eval_step(predict_fn: Callable, *, mesh: Mesh) -> Callable:
  """A forward pass over sharded params (placed with `place`); -> numpy [B_global, ...] per host."""
  out_sharding = NamedSharding(mesh, parallel.batch_spec(mesh))
  jitted = jax.jit(predict_fn, out_shardings=out_sharding)
  def step(params, batch, aux=None):
    out = jitted(params, parallel.put_batch(batch, "jit", mesh), aux)
    if jax.process_count() == 1:
      return jax.device_get(out)
    return multihost_utils.process_allgather(out, tiled=True)
  return step
