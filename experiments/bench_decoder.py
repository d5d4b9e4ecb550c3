"""Prefill and decode speed (tokens/s) of our decoder + generation loop on this machine's backend.

  python -m experiments.bench_decoder      # SmolLM2-135M, batch 1 and 8, f32 and bf16
  python -m experiments.bench_decoder --source=qwen2.5-coder-0.5b-instruct --prompt_len=256

Prefill: one jitted forward over B×P prompt tokens writing the KV cache (tok/s = B·P / time).
Decode: the jitted `lax.while_loop` of `research.models.generate` for N-1 further tokens, no stop
ids (tok/s = B·(N-1) / time). Medians over `--repeats` runs after one compiling run. Random prompt
ids: speed does not depend on the text. A benchmark: it prints (and writes --out), asserts nothing.
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from research.checkpoints import gguf as gguf_ckpt
from research.models import generate as gen


def bench(params, cfg, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
  s = gen.SamplingConfig(max_new_tokens=new_tokens)
  prefill, decode = gen._compiled(cfg, s)  # pylint: disable=protected-access
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)
  mask = np.ones_like(ids)
  rng = jax.random.PRNGKey(0)
  pre, dec = [], []
  for i in range(repeats + 1):
    t0 = time.perf_counter()
    state = jax.block_until_ready(prefill(params, ids, mask, rng))
    t1 = time.perf_counter()
    state = jax.block_until_ready(decode(params, state, rng))
    t2 = time.perf_counter()
    if i:  # run 0 compiles
      pre.append(t1 - t0)
      dec.append(t2 - t1)
  assert int(state["t"]) == new_tokens
  p, d = statistics.median(pre), statistics.median(dec)
  return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": cfg.dtype,
          "prefill_ms": 1e3 * p, "prefill_tok_s": batch * prompt_len / p,
          "decode_ms_per_step": 1e3 * d / (new_tokens - 1),
          "decode_tok_s": batch * (new_tokens - 1) / d}


def main() -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--source", default="smollm2-135m-instruct", help="GGUF name or path")
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--prompt_len", type=int, default=128)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default="", help="write the rows as JSON here")
  a = ap.parse_args()
  cfg, params = gguf_ckpt.load_gguf(a.source)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  dev = jax.devices()[0]
  host = {"source": a.source, "backend": jax.default_backend(), "device": dev.device_kind,
          "host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
          "loadavg_1m": os.getloadavg()[0]}
  rows = []
  for dtype in a.dtypes.split(","):
    for b in (int(x) for x in a.batches.split(",")):
      r = {**host, **bench(params, cfg.replace(dtype=dtype), b, a.prompt_len, a.new_tokens,
                           a.repeats)}
      rows.append(r)
      print(f"{r['backend']} {dtype:8s} B={b:2d} P={a.prompt_len}: prefill "
            f"{r['prefill_tok_s']:9.0f} tok/s ({r['prefill_ms']:.1f} ms), decode "
            f"{r['decode_tok_s']:8.1f} tok/s ({r['decode_ms_per_step']:.2f} ms/step)", flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
