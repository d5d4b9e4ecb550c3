"""Prefill and decode speed (tokens/s) of our decoder + generation loop, alone or against PyTorch.

  python -m experiments.bench_decoder      # SmolLM2-135M, batch 1 and 8, f32 and bf16
  python -m experiments.bench_decoder --source=qwen2.5-coder-0.5b-instruct --prompt_len=256

Prefill: one jitted forward over B×P prompt tokens writing the KV cache (tok/s = B·P / time).
Decode: the jitted `lax.while_loop` of `research.models.generate` for N-1 further tokens, no stop
ids (tok/s = B·(N-1) / time). Medians over `--repeats` runs after one compiling run. Random prompt
ids: speed does not depend on the text. A benchmark: it prints (and writes --out), asserts nothing.

Against the usual PyTorch route (Hugging Face `generate`, ../shared/bench/peer_torch_llm.py):

  python -m experiments.bench_decoder --peer --dtype=f32 [--layers=10] [--rounds=3]

times ours and the peer script (a subprocess: torch never enters this process) on the same GGUF
weights and the peer's shapes and keys: `prefill_b1_tok_s` (one forward over --prompt_len tokens),
`decode_b1_tok_s` / `decode_b<batch>_tok_s` (greedy decode after a 16-token prompt, --new_tokens,
prompt excluded), `train_tok_s` (a full fine-tuning step, forward + backward + AdamW, at
--train_batch × --train_len; bf16 = bf16 compute on f32 params on both sides). Rounds alternate
peer and ours so both see the same machine load; each key is the median over rounds. It also
measures the memory bandwidth a matrix-vector product reaches (decode at batch 1 reads every
weight once per token) and writes results/bench/peer_llm_<dtype>_<shape>.{json,md}.
--layers N keeps N layers spread evenly as the peer does (a layer-sliced student's shape).
--skip_peer writes ours alone (CI without torch). Training is timed in the first --train_rounds
rounds only: the peer's full fine-tuning step takes minutes on a loaded 2-core VM.
"""

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from research.checkpoints import gguf as gguf_ckpt
from research.models import generate as gen

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT.parent / "shared" / "bench" / "peer_torch_llm.py"
PEER_KEYS = ("prefill_b1_tok_s", "decode_b1_tok_s", "decode_b{batch}_tok_s", "train_tok_s")


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


# ---------------------------------------------------------------------------------------------
# Against the PyTorch peer.

def host_cpu() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return platform.processor() or platform.machine()


def _version(pkg: str) -> str | None:
  try:
    return importlib.metadata.version(pkg)
  except importlib.metadata.PackageNotFoundError:
    return None


def even_layers(n: int, keep: int) -> list[int]:
  """The peer script's evenly spread layer indices (first and last kept)."""
  return sorted({round(i * (n - 1) / max(keep - 1, 1)) for i in range(keep)})


def memory_bandwidth(nbytes: int, repeats: int = 5) -> dict:
  """GB/s of f32 matrix-vector products over one `nbytes` matrix (numpy and XLA, both layouts)."""
  d = 576
  n = max(nbytes // 4 // d, 1)
  a = np.random.default_rng(0).random((n, d), np.float32)
  x = np.ones(d, np.float32)
  size = a.nbytes

  def best(fn):
    fn()
    ts = []
    for _ in range(repeats):
      t = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t)
    return size / statistics.median(ts) / 1e9

  out = {"matrix_bytes": int(a.nbytes), "numpy_Ax": best(lambda: a @ x)}
  at = np.ascontiguousarray(a.T)
  out["numpy_xA"] = best(lambda: x @ at)
  del at
  aj, xj = jnp.asarray(a), jnp.asarray(x)
  del a
  f = jax.jit(lambda m, v: v[None] @ m.T)  # the tied lm_head's form
  out["xla_x_At"] = best(lambda: jax.block_until_ready(f(aj, xj)))
  g = jax.jit(lambda m, v: m @ v)
  out["xla_Ax"] = best(lambda: jax.block_until_ready(g(aj, xj)))
  out["best_gb_s"] = max(v for k, v in out.items() if k != "matrix_bytes")
  return out


def _train_step(cfg, lr: float = 1e-5):
  """A full fine-tuning step (next-token cross-entropy, AdamW on every param), jitted."""
  import optax  # pylint: disable=g-import-not-at-top
  from research.models.decoder import Decoder  # pylint: disable=g-import-not-at-top
  model, tx = Decoder(cfg), optax.adamw(lr)

  def loss_fn(params, ids):
    logits = model.apply({"params": params}, ids)["logits"][:, :-1]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, ids):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return tx, step


class Ours:
  """Our route, compiled once; `round()` times every peer key once (medians over iters)."""

  def __init__(self, params, cfg, a):
    self.a, self.cfg = a, cfg
    self.params = jax.tree_util.tree_map(jnp.asarray, params)
    rng = np.random.default_rng(0)
    self.ids = lambda b, n: rng.integers(100, cfg.vocab_size - 100, (b, n)).astype(np.int32)
    self.key = jax.random.PRNGKey(0)
    s = gen.SamplingConfig(max_new_tokens=a.new_tokens)
    self.prefill, self.decode = gen._compiled(cfg, s)  # pylint: disable=protected-access
    self.inputs = {"p1": self.ids(1, a.prompt_len), "d1": self.ids(1, 16),
                   "db": self.ids(a.batch, 16)}
    if not a.skip_train:
      self.tx, self.step = _train_step(cfg)
      self.train_ids = self.ids(a.train_batch, a.train_len)
    t = time.perf_counter()
    self.round(compile_only=True)
    self.compile_s = time.perf_counter() - t

  def _prefill(self, ids):
    return jax.block_until_ready(self.prefill(self.params, ids, np.ones_like(ids), self.key))

  def _gen_decode_s(self, ids) -> float:
    state = self._prefill(ids)
    t = time.perf_counter()
    state = jax.block_until_ready(self.decode(self.params, state, self.key))
    return time.perf_counter() - t

  def round(self, compile_only: bool = False, train: bool = True) -> dict:
    a = self.a
    iters = 1 if compile_only else a.iters
    out = {}
    ts = []
    for _ in range(iters):
      t = time.perf_counter()
      self._prefill(self.inputs["p1"])
      ts.append(time.perf_counter() - t)
    out["prefill_b1_tok_s"] = a.prompt_len / statistics.median(ts)
    steps = a.new_tokens - 1  # the prefill emits the first new token
    t1 = statistics.median(self._gen_decode_s(self.inputs["d1"]) for _ in range(max(iters // 2, 1)))
    out["decode_b1_tok_s"] = steps / t1
    out["decode_b1_ms_per_token"] = 1e3 * t1 / steps
    tb = statistics.median(self._gen_decode_s(self.inputs["db"]) for _ in range(max(iters // 2, 1)))
    out[f"decode_b{a.batch}_tok_s"] = a.batch * steps / tb
    if not a.skip_train and train:
      if compile_only:
        self.opt_state = self.tx.init(self.params)
        self.train_params = jax.tree_util.tree_map(jnp.copy, self.params)
      ts = []
      for _ in range(1 if compile_only else max(iters // 2, 2)):
        t = time.perf_counter()
        self.train_params, self.opt_state, loss = self.step(self.train_params, self.opt_state,
                                                            self.train_ids)
        jax.block_until_ready(loss)
        ts.append(time.perf_counter() - t)
      out["train_tok_s"] = a.train_batch * a.train_len / statistics.median(ts)
    return out


def run_peer(a, src: list[str], out_json: str, train: bool = True) -> dict:
  cmd = [sys.executable, str(a.peer_script), *src, "--dtype", a.dtype,
         "--prompt-len", str(a.prompt_len), "--new-tokens", str(a.new_tokens),
         "--batch", str(a.batch), "--train-batch", str(a.train_batch),
         "--train-len", str(a.train_len), "--iters", str(a.iters), "--json", out_json]
  if a.layers:
    cmd += ["--layers", str(a.layers)]
  if a.peer_threads:
    cmd += ["--threads", str(a.peer_threads)]
  if a.skip_train or not train:
    cmd.append("--skip-train")
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise SystemExit(f"bench_decoder: the peer failed ({shlex.join(cmd)}): "
                     f"{(proc.stderr.strip().splitlines() or ['no stderr'])[-1]}")
  with open(out_json) as f:
    return json.load(f)


def _median_keys(rounds: list[dict]) -> dict:
  keys = [k for k in rounds[0] if isinstance(rounds[0][k], (int, float)) and k.endswith(
      ("tok_s", "ms_per_token"))]
  return {k: statistics.median(r[k] for r in rounds if k in r) for k in keys}


def _param_bytes(params) -> int:
  return int(sum(np.asarray(x).size * 4 for x in jax.tree_util.tree_leaves(params)))


def compare(a) -> dict:
  if not a.skip_peer:
    if not pathlib.Path(a.peer_script).exists():
      raise SystemExit(f"bench_decoder: peer script {a.peer_script} not found; pass "
                       "--peer_script=PATH or --skip_peer.")
    if importlib.util.find_spec("torch") is None:
      raise SystemExit("bench_decoder: --peer needs torch and transformers (pip install "
                       "torch==2.13.0 transformers gguf accelerate), or pass --skip_peer.")
  load_before = os.getloadavg()
  t_start = time.time()
  if a.model_dir:
    from research.models import registry  # pylint: disable=g-import-not-at-top
    cfg, params = registry.load_hf(a.model_dir)
    src, source = ["--model-dir", str(pathlib.Path(a.model_dir).resolve())], str(a.model_dir)
  else:
    path = gguf_ckpt.resolve_gguf(a.source)
    cfg, params = gguf_ckpt.load_gguf(path)
    src, source = ["--gguf", str(path)], str(path)
  full_layers = cfg.num_layers
  kept = list(range(full_layers))
  if a.layers:
    from research.models import registry  # pylint: disable=g-import-not-at-top
    kept = even_layers(full_layers, a.layers)
    params, cfg = registry.get_family("llama").slice_layers(params, cfg, kept)
  cfg = cfg.replace(dtype={"f32": "float32", "bf16": "bfloat16"}[a.dtype])
  weight_bytes = _param_bytes(params)
  bw = memory_bandwidth(a.bw_bytes or weight_bytes)
  ours = Ours(params, cfg, a)
  ours_rounds, peer_rounds = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(a.rounds):
      order = ("peer", "ours") if r % 2 == 0 else ("ours", "peer")
      for who in order:
        train = r < a.train_rounds
        if who == "ours":
          ours_rounds.append(ours.round(train=train))
        elif not a.skip_peer:
          peer_rounds.append(run_peer(a, src, os.path.join(tmp, f"peer{r}.json"), train))
        print(f"round {r} {who} done, load {os.getloadavg()[0]:.2f}", flush=True)
  load_after = os.getloadavg()
  ours_obj = {"route": f"jax {jax.__version__} / flax, jit (prefill + lax.while_loop decode)",
              "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
              "dtype": a.dtype, "layers": cfg.num_layers, "compile_s": ours.compile_s,
              "weight_bytes_f32": weight_bytes, **_median_keys(ours_rounds),
              "rounds": ours_rounds}
  peer_obj = None
  if peer_rounds:
    peer_obj = {k: v for k, v in peer_rounds[0].items() if not k.endswith(("tok_s", "token"))}
    peer_obj.update(_median_keys(peer_rounds), rounds=peer_rounds)
  keys = [k.format(batch=a.batch) for k in PEER_KEYS if not (a.skip_train and k == "train_tok_s")]
  ratios = {k: ours_obj[k] / peer_obj[k] for k in keys if peer_obj and peer_obj.get(k)}
  # Decode at batch 1 reads every weight once per token: bytes/token × tok/s vs the bandwidth.
  peer_bytes = weight_bytes // (2 if a.dtype == "bf16" else 1)
  roofline = {"bytes_per_token_ours": weight_bytes, "bytes_per_token_peer": peer_bytes,
              "bandwidth_gb_s": bw["best_gb_s"],
              "ours_decode_b1_gb_s": ours_obj["decode_b1_tok_s"] * weight_bytes / 1e9,
              "ours_fraction_of_bound": ours_obj["decode_b1_tok_s"] * weight_bytes / 1e9
                                        / bw["best_gb_s"]}
  if peer_obj:
    roofline["peer_decode_b1_gb_s"] = peer_obj["decode_b1_tok_s"] * peer_bytes / 1e9
    roofline["peer_fraction_of_bound"] = roofline["peer_decode_b1_gb_s"] / bw["best_gb_s"]
  return {
      "command": shlex.join(["python", "-m", "experiments.bench_decoder", *a.argv]),
      "git_sha": _git_sha(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t_start)),
      "wall_s": time.time() - t_start, "source": source, "host_cpu": host_cpu(),
      "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
      "versions": {"jax": jax.__version__, "jaxlib": _version("jaxlib"), "flax": _version("flax"),
                   "torch": _version("torch"), "transformers": _version("transformers")},
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "shape": {"dtype": a.dtype, "layers": cfg.num_layers, "of_layers": full_layers,
                "kept_layers": kept, "prompt_len": a.prompt_len, "decode_prompt_len": 16,
                "new_tokens": a.new_tokens, "batch": a.batch, "train_batch": a.train_batch,
                "train_len": a.train_len, "peer_threads": a.peer_threads, "rounds": a.rounds, "train_rounds": a.train_rounds,
                "iters": a.iters},
      "memory_bandwidth": bw, "decode_b1_roofline": roofline,
      "ours": ours_obj, "peer": peer_obj, "ratios_ours_over_peer": ratios}


def _git_sha() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def markdown(res: dict) -> str:
  sh, o, p, r = res["shape"], res["ours"], res["peer"], res["ratios_ours_over_peer"]
  rf, bw = res["decode_b1_roofline"], res["memory_bandwidth"]
  la, lb = res["loadavg_before"], res["loadavg_after"]
  train_note = ("not timed: --skip_train" if "train_tok_s" not in o
                else f"timed in the first {sh.get('train_rounds', sh['rounds'])} round(s)")
  lines = [f"# Decoder speed: ours (JAX) vs Hugging Face PyTorch, {sh['dtype']}, "
           f"{sh['layers']}/{sh['of_layers']} layers", "",
           f"Command: `{res['command']}`  ", f"Commit: {res['git_sha']} ({res['date_utc']} UTC)  ",
           f"Machine: {res['host_cpu']}, {res['cpus']} CPUs; load average before "
           f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, after {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}  ",
           f"Versions: jax {res['versions']['jax']}, torch {res['versions']['torch']}, "
           f"transformers {res['versions']['transformers']}; peer torch threads: "
           f"{sh.get('peer_threads') or 'default'}  ",
           f"Shapes: prefill batch 1 × {sh['prompt_len']}; decode {sh['new_tokens']} new tokens after "
           f"a 16-token prompt, batch 1 and {sh['batch']}; train {sh['train_batch']} × "
           f"{sh['train_len']} ({train_note}). Medians over "
           f"{sh['rounds']} alternating rounds (peer, ours, ours, peer, ...). Prefill: ours "
           "writes the KV cache and computes the last position's logits; the peer's forward "
           "computes all positions' logits.", "",
           "| metric | ours | peer | ours / peer |", "|---|---:|---:|---:|"]
  for k in [k for k in o if k.endswith("tok_s")]:
    pv = p.get(k) if p else None
    lines.append(f"| {k} | {o[k]:.1f} | {'n/a' if pv is None else f'{pv:.1f}'} | "
                 f"{f'{r[k]:.2f}' if k in r else 'n/a'} |")
  lines += ["", f"Decode at batch 1 is memory-bound. This VM's f32 matrix-vector product over a "
            f"{bw['matrix_bytes'] / 1e6:.0f} MB matrix: numpy {bw['numpy_Ax']:.1f} (A·x) / "
            f"{bw['numpy_xA']:.1f} (x·A) GB/s, XLA {bw['xla_x_At']:.1f} (x·Aᵀ) / {bw['xla_Ax']:.1f} "
            f"(A·x) GB/s; bound used {rf['bandwidth_gb_s']:.1f} GB/s. Ours reads "
            f"{rf['bytes_per_token_ours'] / 1e6:.0f} MB/token (f32 weights in both dtypes) = "
            f"{rf['ours_decode_b1_gb_s']:.1f} GB/s, {100 * rf['ours_fraction_of_bound']:.0f}% of "
            "the bound."]
  if p:
    lines[-1] += (f" The peer reads {rf['bytes_per_token_peer'] / 1e6:.0f} MB/token = "
                  f"{rf['peer_decode_b1_gb_s']:.1f} GB/s, "
                  f"{100 * rf['peer_fraction_of_bound']:.0f}%.")
  return "\n".join(lines) + "\n"


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--source", default="smollm2-135m-instruct", help="GGUF name or path")
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--prompt_len", type=int, default=128)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default="", help="write the rows as JSON here")
  g = ap.add_argument_group("against the PyTorch peer (--peer)")
  g.add_argument("--peer", action="store_true", help="time ours against the peer script")
  g.add_argument("--peer_script", default=str(PEER_SCRIPT))
  g.add_argument("--skip_peer", action="store_true", help="with --peer: ours alone (no torch)")
  g.add_argument("--peer_threads", type=int, default=0,
                 help="torch threads for the peer (0 = its default, all cores); on a loaded VM "
                      "1 avoids OpenMP's collapse when a core is taken")
  g.add_argument("--model_dir", default="", help="an HF folder instead of --source (GGUF)")
  g.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
  g.add_argument("--layers", type=int, default=0, help="keep N evenly spread layers; 0 = all")
  g.add_argument("--batch", type=int, default=8)
  g.add_argument("--train_batch", type=int, default=8)
  g.add_argument("--train_len", type=int, default=256)
  g.add_argument("--skip_train", action="store_true")
  g.add_argument("--iters", type=int, default=5, help="timed calls per key per round")
  g.add_argument("--rounds", type=int, default=3)
  g.add_argument("--train_rounds", type=int, default=1,
                 help="time training in the first N rounds only (the peer's is minutes)")
  g.add_argument("--bw_bytes", type=int, default=0, help="bandwidth matrix (default: weights)")
  g.add_argument("--out_dir", default=str(ROOT / "results" / "bench"))
  a = ap.parse_args(argv)
  a.argv = argv
  if a.peer:
    res = compare(a)
    os.makedirs(a.out_dir, exist_ok=True)
    shape = f"L{res['shape']['layers']}of{res['shape']['of_layers']}"
    stem = os.path.join(a.out_dir, f"peer_llm_{a.dtype}_{shape}")
    with open(stem + ".json", "w") as f:
      json.dump(res, f, indent=1)
    text = markdown(res)
    with open(stem + ".md", "w") as f:
      f.write(text)
    print(text)
    return res
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
