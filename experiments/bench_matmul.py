"""One f32 matmul, XLA:CPU vs torch, in GFLOP/s: where the batched-inference gap to torch comes from.

  python -m experiments.bench_matmul            # the FFN up-projection of MiniLM at batch 32 x seq 64

A benchmark: it prints, it asserts nothing. torch is optional (only for the comparison).
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _gflops(fn, flops: float, iters: int = 50) -> float:
  for _ in range(5):
    fn()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return flops / statistics.median(times) / 1e9


def main(m: int = 2048, k: int = 384, n: int = 1536) -> dict:
  rng = np.random.default_rng(0)
  a = rng.standard_normal((m, k), np.float32)
  b = rng.standard_normal((k, n), np.float32)
  flops = 2.0 * m * k * n
  f = jax.jit(jnp.matmul)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  out = {"shape": f"{m}x{k} @ {k}x{n}",
         "jax": _gflops(lambda: f(ja, jb).block_until_ready(), flops)}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("torch not installed: JAX only", file=sys.stderr)
  else:
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out["torch"] = _gflops(lambda: ta @ tb, flops)
  for key in ("jax", "torch"):
    if key in out:
      print(f"{key:6s} {out['shape']} f32: {out[key]:.1f} GFLOP/s")
  if "torch" in out:
    print(f"jax / torch: {out['jax'] / out['torch']:.2f}")
  return out


if __name__ == "__main__":
  main()
