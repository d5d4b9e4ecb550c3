"""Mixed-precision dense matmul: inputs in the compute dtype, f32 accumulation and output, and a
backward pass that stays in the compute dtype.

JAX's own transpose of a bf16 x bf16 -> f32 dot receives an f32 cotangent, so it upcasts the saved
bf16 operands and runs both gradient dots in f32: a bf16 train step ran two thirds of its dense
FLOPs at f32 speed (XLA:CPU on AVX512-BF16: ~350 GFLOP/s f32 vs ~620-750 bf16 through YNNPACK at
MiniLM's shapes, experiments/bench_matmul.py --grad). Mixed-precision training (Micikevicius et
al. 2018; PyTorch autocast does the same) casts the cotangent instead: both gradient dots take
compute-dtype inputs and accumulate in f32. Attention's einsums keep JAX's own gradient: some
bf16 x bf16 -> f32 operand orders of their transposes have no XLA:CPU kernel ("Unsupported element
type for DotThunk").
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def _specs(ndim: int) -> tuple[str, str, str]:
  lead = "abcegh"[:ndim - 1]
  return f"{lead}d", "df", f"{lead}f"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed(x: Array, w: Array, dtype: Any) -> Array:
  return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _mixed_fwd(x, w, dtype):
  x_c, w_c = x.astype(dtype), w.astype(dtype)
  out = jnp.matmul(x_c, w_c, preferred_element_type=jnp.float32)
  # Zero-size arrays carry the operands' own dtypes to the backward pass.
  return out, (x_c, w_c, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _mixed_bwd(dtype, res, g):
  x_c, w_c, x_kind, w_kind = res
  sx, sw, so = _specs(x_c.ndim)
  g_c = g.astype(dtype)
  dx = jnp.einsum(f"{so},{sw}->{sx}", g_c, w_c, preferred_element_type=jnp.float32)
  dw = jnp.einsum(f"{so},{sx}->{sw}", g_c, x_c, preferred_element_type=jnp.float32)
  return dx.astype(x_kind.dtype), dw.astype(w_kind.dtype)


_mixed.defvjp(_mixed_fwd, _mixed_bwd)


def matmul(x: Array, w: Array, dtype: Any) -> Array:
  """x[..., d] @ w[d, f] with inputs in `dtype` and f32 accumulation/output.

  float32: the plain matmul and JAX's gradient. Otherwise the gradient dots run in `dtype` too
  (module docstring).
  """
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.matmul(x.astype(jnp.float32), w.astype(jnp.float32),
                      preferred_element_type=jnp.float32)
  if w.ndim != 2 or x.ndim < 1 or x.ndim > 7:
    raise ValueError(f"precision.matmul: x{x.shape} @ w{w.shape}; w must be 2-D (in, out).")
  return _mixed(x, w, jnp.dtype(dtype))
