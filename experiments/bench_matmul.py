"""The three dots of a dense layer's train step, XLA:CPU vs torch, f32 and bf16, in GFLOP/s.

  python -m experiments.bench_matmul [--out=results/bench/matmul.json]

MiniLM's FFN up-projection at batch 32 x seq 64 (x: 32x64x384, w: 384x1536): forward y = x @ w,
the input gradient dx = g @ w^T and the weight gradient dw = x^T @ g. JAX routes: f32; bf16 with
f32 accumulation (what research/models/precision.matmul runs, backward included); and JAX's own
bf16 backward, which upcasts to f32 (the transpose of a bf16 x bf16 -> f32 dot gets an f32
cotangent). torch: f32 and bf16 (oneDNN). A benchmark: it prints and writes, it asserts nothing;
torch is optional.
"""

import json
import pathlib
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from research import cost
from research.models import precision

_OUT = flags.DEFINE_string("out", "", "Also write the figures to this JSON file.")

B, L, D, F = 32, 64, 384, 1536


def _gflops(fn, flops: float, iters: int = 30) -> float:
  for _ in range(3):
    fn()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return flops / statistics.median(times) / 1e9


def main(argv) -> dict:
  del argv
  rng = np.random.default_rng(0)
  x = rng.standard_normal((B, L, D), np.float32)
  w = rng.standard_normal((D, F), np.float32)
  g = rng.standard_normal((B, L, F), np.float32)
  flops = 2.0 * B * L * D * F
  f32 = jnp.float32
  dots = {  # name: (spec, lhs, rhs)
      "forward y=x@w": ("bld,df->blf", x, w),
      "input grad dx=g@w^T": ("blf,df->bld", g, w),
      "weight grad dw=x^T@g": ("blf,bld->df", g, x),
  }
  rows = {}
  for name, (spec, a, b) in dots.items():
    row = {}
    for label, dt in (("jax_f32", f32), ("jax_bf16", jnp.bfloat16)):
      fn = jax.jit(lambda a, b, spec=spec: jnp.einsum(spec, a, b, preferred_element_type=f32))
      ja, jb = jnp.asarray(a, dt), jnp.asarray(b, dt)
      row[label] = _gflops(lambda: fn(ja, jb).block_until_ready(), flops)
    rows[name] = row
  # JAX's own gradient of a bf16 x bf16 -> f32 dot: both backward dots in f32, after upcasts.
  xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  own = jax.jit(jax.grad(lambda x, w: jnp.vdot(jnp.matmul(x, w, preferred_element_type=f32),
                                               jnp.asarray(g)), (0, 1)))
  ours = jax.jit(jax.grad(lambda x, w: jnp.vdot(precision.matmul(x, w, jnp.bfloat16),
                                                jnp.asarray(g)), (0, 1)))
  backward = {"jax_bf16_own_grad": _gflops(lambda: jax.block_until_ready(own(xb, wb)), 2 * flops),
              "precision_matmul_grad": _gflops(lambda: jax.block_until_ready(ours(xb, wb)),
                                               2 * flops)}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("torch not installed: JAX only", file=sys.stderr)
  else:
    t = {k: torch.from_numpy(v) for k, v in (("x", x), ("w", w), ("g", g))}
    for dt, label in ((torch.float32, "torch_f32"), (torch.bfloat16, "torch_bf16")):
      tx, tw, tg = (t[k].to(dt).reshape(-1, t[k].shape[-1]) for k in ("x", "w", "g"))
      calls = {"forward y=x@w": lambda: tx @ tw, "input grad dx=g@w^T": lambda: tg @ tw.T,
               "weight grad dw=x^T@g": lambda: tx.T @ tg}
      for name, fn in calls.items():
        rows[name][label] = _gflops(fn, flops)
  out = {"host_cpu": cost.host_cpu_name(), "shape": f"x {B}x{L}x{D}, w {D}x{F}", "gflops": rows,
         "backward_gflops": backward, "jax": jax.__version__}
  for name, row in rows.items():
    print(f"{name:22s}", "  ".join(f"{k} {v:6.0f}" for k, v in row.items()))
  print("bf16 backward (dx + dw):", "  ".join(f"{k} {v:6.0f}" for k, v in backward.items()))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(out, indent=1) + "\n")
  return out


if __name__ == "__main__":
  app.run(main)
