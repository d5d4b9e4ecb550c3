"""Devices: multi-process start-up, the ("data"[, "fsdp"]) mesh, and placing state and batches."""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

PyTree = Any
Batch = Mapping[str, Any]
PARALLEL = ("jit", "pmap")
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize` when the environment describes a multi-process job.

  Recognised: JAX_COORDINATOR_ADDRESS (+ JAX_NUM_PROCESSES, JAX_PROCESS_ID), or a SLURM/Open MPI
  job with more than one task (jax auto-detects those). Returns True when initialised here.
  """
  env = os.environ
  if jax.distributed.is_initialized():  # a second run in the same process
    return False
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


def make_mesh(devices: Any = None, fsdp: int = 1) -> Mesh:
  """Mesh over all (global) devices: 1-D "data", or ("data", "fsdp") with `fsdp` > 1.

  Devices come in process order, so an fsdp group (a row) stays inside one host when its local
  device count is a multiple of `fsdp`: parameter all-gathers then never leave the host.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  if fsdp == 1:
    return Mesh(devices.reshape(-1), (DATA_AXIS,))
  if devices.size % fsdp:
    raise ValueError(f"train.fsdp={fsdp} does not divide the {devices.size} devices.")
  return Mesh(devices.reshape(-1, fsdp), (DATA_AXIS, FSDP_AXIS))


def batch_spec(mesh: Mesh) -> P:
  """Batch rows split over every mesh axis (under fsdp each device still gets its own rows)."""
  names = tuple(mesh.axis_names)
  return P(DATA_AXIS) if names == (DATA_AXIS,) else P(names)


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


def put_batch(batch: Batch, parallel: str, mesh: Mesh | None) -> Batch:
  """Process-local numpy batch -> global array split over the mesh (jit) or [n_local, B/n, ...]."""
  if parallel == "pmap":
    n = jax.local_device_count()
    def stack(x):
      if x.shape[0] % n:
        raise ValueError(f"per-process batch {x.shape[0]} is not divisible by the {n} local "
                         f"devices; change data.batch_size / data.eval_batch_size.")
      return x.reshape(n, x.shape[0] // n, *x.shape[1:])
    return jax.tree.map(stack, dict(batch))
  sharding = NamedSharding(mesh, batch_spec(mesh))
  n = mesh.devices.size // jax.process_count()
  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if x.shape[0] % n:
      raise ValueError(f"per-process batch {x.shape[0]} is not divisible by the {n} local "
                       f"devices; change data.batch_size / data.eval_batch_size.")
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return jax.tree.map(put, dict(batch))


def to_host(tree: PyTree) -> PyTree:
  """Device arrays -> numpy; arrays sharded across processes are gathered (every host gets all)."""
  leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
  if all(x.is_fully_addressable or x.is_fully_replicated for x in leaves):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
