"""Train-step throughput and MFU on one accelerator: ours (JAX) vs PyTorch eager and torch.compile.

  python -m experiments.bench_gpu --out=results/bench/gpu_<card>.json

One command that writes one JSON and exits (a GPU window is short). Random params, so it needs no
weights or data. Cases (each a full train step: forward, backward, AdamW, on one device):

  minilm_l6     BERT family, MiniLM-L6 shape (D 384, 6 layers), seq 128
  bert_base     BERT-base shape (D 768, 12 layers, 12 heads, F 3072), seq 128
  smollm2_135m  Llama family, SmolLM2-135M shape (D 576, 30 layers, GQA 9/3, tied), seq 256

Encoders run with two attentions, same params: "ours" (the model's einsum + softmax) and "dpa"
(`jax.nn.dot_product_attention`, cuDNN on a GPU in bf16, padding as key lengths), swapped in for
this benchmark only. Attention dropout is 0 in every route (the fused kernel has none here); hidden
dropout 0.1. MFU = the family's analytic matmul FLOPs per step / step time / the card's dense bf16
peak (`--peak_tflops`, else a table by device name; none on CPU). The PyTorch peers (Hugging Face
transformers, SDPA attention, autocast bf16 over f32 weights, AdamW) run in a child process of the
same command when torch is importable (`--torch=none|eager|compile|eager,compile`).

Steps are dispatched back to back and waited for once (throughput). CPU smoke run (tiny shapes):
python -m experiments.bench_gpu --tiny --steps=2 --warmup=1
--torch=eager --out=/tmp/bench_gpu.json. A benchmark: it prints and writes, it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

# JAX would take 75% of the GPU at start-up and starve the PyTorch child; allocate on demand.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research import cost
from research.models import encoder
from research.models import registry
from research.train import parallel
from research.train import step as step_lib

# Dense bf16 peak TFLOP/s by device-name fragment (vendor spec sheets, no sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10G": 125.0, "A10": 125.0, "V100": 125.0, "T4": 65.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0}


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  family: str
  overrides: dict
  batch: int
  seq_len: int
  attentions: tuple[str, ...]


CASES = {
    "minilm_l6": Case("minilm_l6", "bert", dict(hidden_size=384, num_layers=6, num_heads=12,
                                                 intermediate_size=1536), 64, 128, ("ours", "dpa")),
    "bert_base": Case("bert_base", "bert", dict(hidden_size=768, num_layers=12, num_heads=12,
                                                intermediate_size=3072), 64, 128, ("ours", "dpa")),
    "smollm2_135m": Case("smollm2_135m", "llama", {}, 16, 256, ("ours",)),
}
TINY = {"bert": dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                     vocab_size=512),
        "llama": dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                      intermediate_size=64, vocab_size=512)}
NUM_LABELS = 3


def case_for(name: str, args: argparse.Namespace) -> Case:
  c = CASES[name]
  if args.tiny:
    c = dataclasses.replace(c, overrides=TINY[c.family], batch=4, seq_len=16)
  return dataclasses.replace(c, batch=args.batch or c.batch, seq_len=args.seq_len or c.seq_len)


# ------------------------------------------------------------------------------------ JAX routes

class DpaSelfAttention(nn.Module):
  """`encoder.SelfAttention` (same param names) through `jax.nn.dot_product_attention`."""
  cfg: encoder.EncoderConfig
  implementation: str | None = None

  @nn.compact
  def __call__(self, h_BxLxD, bias_Bx1x1xL, deterministic):
    del deterministic  # no attention dropout in this benchmark
    cfg = self.cfg
    dt = cfg.compute_dtype
    dense = lambda name: encoder.Dense(cfg.hidden_size, dt, cfg.initializer_range, name=name)
    B, L, _ = h_BxLxD.shape
    split = lambda x: x.reshape(B, L, cfg.num_heads, cfg.head_dim).astype(dt)
    q, k, v = (split(dense(n)(h_BxLxD)) for n in ("query", "key", "value"))
    # Right padding: the real keys of a row are its first `lengths` (the encoder's mask bias is 0).
    lengths = jnp.sum(bias_Bx1x1xL[:, 0, 0, :] == 0, axis=-1).astype(jnp.int32)
    ctx = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths,
                                       implementation=self.implementation)
    return dense("out")(ctx.reshape(B, L, cfg.hidden_size)), jnp.zeros((), jnp.float32)


@contextlib.contextmanager
def attention(kind: str, implementation: str | None):
  """Swaps the encoder's attention module for the block (Layer looks it up at trace time)."""
  orig = encoder.SelfAttention
  if kind == "dpa":
    encoder.SelfAttention = functools.partial(DpaSelfAttention, implementation=implementation)
  try:
    yield
  finally:
    encoder.SelfAttention = orig


def _batch(case: Case, vocab: int, rng: np.random.Generator) -> dict:
  ids = rng.integers(5, vocab, (case.batch, case.seq_len), dtype=np.int32)
  mask = np.ones_like(ids)
  mask[1::2, case.seq_len * 3 // 4:] = 0  # every other row padded for the last quarter
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
          "label": rng.integers(0, NUM_LABELS, (case.batch,), dtype=np.int32),
          "valid": np.ones((case.batch,), np.float32)}


def _loss_fn(case: Case, apply):
  def loss_fn(params, batch, rng, aux):
    del aux
    out = apply(params, batch, deterministic=False, rng=rng)
    if case.family == "llama":  # next-token CE over the real tokens
      logits, targets = out["logits"][:, :-1], batch["input_ids"][:, 1:]
      w = batch["attention_mask"][:, 1:].astype(jnp.float32)
    else:
      logits, targets, w = out["logits"], batch["label"], batch["valid"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    loss = jnp.sum(ce * w) / jnp.sum(w)
    return loss, {}
  return loss_fn


def _time_steps(step, state, batch, warmup: int, steps: int) -> tuple[float, float, float]:
  """(compile + first step seconds, seconds per step, last loss): `steps` steps dispatched back to
  back and waited for once, as a training loop runs them (throughput, not one step's latency)."""
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  first = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  jax.block_until_ready((state, m))
  return first, (time.perf_counter() - t0) / steps, float(m["loss"])


def run_jax(case: Case, attn: str, args: argparse.Namespace, peak: float | None,
            implementation: str | None = None) -> dict:
  """One JAX train-step measurement (our model, our train step, one device)."""
  fam = registry.get_family(case.family)
  on_gpu = jax.default_backend() == "gpu"
  impl = implementation or ("cudnn" if attn == "dpa" and on_gpu and args.dtype == "bfloat16"
                            else None)
  with attention(attn, impl):
    module, params, cfg = registry.build_model(case.family, None, num_labels=NUM_LABELS,
                                               dtype=args.dtype, overrides=case.overrides,
                                               random_init=True)
    if case.family == "bert":
      cfg = cfg.replace(hidden_dropout=0.1, attention_dropout=0.0)
      module = fam.classifier(cfg)
    mesh = parallel.make_mesh(jax.devices()[:1])
    tx = optax.adamw(1e-4)
    step = step_lib.make_train_step(_loss_fn(case, fam.bind(module)), tx, mesh=mesh)
    state = parallel.place_state(
        step_lib.create_train_state(params, tx, jax.random.PRNGKey(0)), "jit", mesh)
    batch = parallel.put_batch(_batch(case, cfg.vocab_size, np.random.default_rng(0)), "jit", mesh)
    first, sec, loss = _time_steps(step, state, batch, args.warmup, args.steps)
  kw = {"num_labels": NUM_LABELS} if case.family == "bert" else {}
  flops = float(fam.analytic_flops(cfg, case.batch, case.seq_len, True, **kw))
  return _row(case, "jax", attn, args, sec, flops, peak, first_step_s=first, loss=loss,
              attention_impl=(impl or "xla") if attn == "dpa" else "einsum",
              params=int(sum(x.size for x in jax.tree.leaves(params))))


def _row(case: Case, route: str, attn: str, args, sec: float, flops: float, peak, **extra) -> dict:
  tflops = flops / sec / 1e12
  return {"case": case.name, "route": route, "attention": attn, "dtype": args.dtype,
          "batch": case.batch, "seq_len": case.seq_len, "step_ms": sec * 1e3,
          "examples_per_s": case.batch / sec, "tokens_per_s": case.batch * case.seq_len / sec,
          "step_tflop": flops / 1e12, "tflops": tflops,
          "mfu": tflops / peak if peak else None, **extra}


# -------------------------------------------------------------------------------- PyTorch peers

def _torch_model(spec: dict, device):
  """The Hugging Face model of a case's shape (random init, SDPA attention)."""
  import transformers  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  m = spec["model"]
  if spec["family"] == "llama":
    cfg = transformers.LlamaConfig(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"], num_hidden_layers=m["num_layers"],
        num_attention_heads=m["num_heads"], num_key_value_heads=m["num_kv_heads"],
        head_dim=m["head_dim"], tie_word_embeddings=m["tie_word_embeddings"],
        rope_theta=m["rope_theta"], rms_norm_eps=m["rms_norm_eps"],
        max_position_embeddings=m["max_position_embeddings"])
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
  else:
    cfg = transformers.BertConfig(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
        num_hidden_layers=m["num_layers"], num_attention_heads=m["num_heads"],
        intermediate_size=m["intermediate_size"], num_labels=NUM_LABELS,
        max_position_embeddings=m["max_position_embeddings"], hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0, layer_norm_eps=m["layer_norm_eps"])
    model = transformers.AutoModelForSequenceClassification.from_config(
        cfg, attn_implementation="sdpa")
  return model.to(device).train()


def torch_case(spec: dict, route: str) -> dict:
  """One PyTorch train-step measurement: forward (autocast), backward, AdamW."""
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(0)
  model = _torch_model(spec, device)
  n_params = sum(p.numel() for p in model.parameters())
  if route == "torch_compile":
    model = torch.compile(model)
  b = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in spec["batch"].items()}
  b = {k: v if v.is_floating_point() else v.long() for k, v in b.items()}  # HF's int64 ids
  if spec["family"] == "llama":
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              labels=b["input_ids"].masked_fill(b["attention_mask"] == 0, -100))
  else:
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              token_type_ids=b["token_type_ids"], labels=b["label"])
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
  amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=spec["dtype"] == "bfloat16")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  def step():
    with torch.autocast(**amp):
      loss = model(**kw).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  t0 = time.perf_counter()
  step()
  sync()
  first = time.perf_counter() - t0
  for _ in range(max(spec["warmup"] - 1, 0)):
    step()
  sync()
  t0 = time.perf_counter()
  for _ in range(spec["steps"]):
    loss = step()
  sync()
  return {"step_s": (time.perf_counter() - t0) / spec["steps"], "first_step_s": first,
          "loss": float(loss),
          "params": int(n_params), "torch": torch.__version__,
          "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}


def _torch_worker(spec_path: str) -> None:
  """Child process: every (case, route) of the spec file, one JSON line each (errors included)
  appended to <spec>.rows as soon as it is measured, so a timeout keeps the finished ones."""
  with open(spec_path) as f:
    specs = json.load(f)
  for spec in specs:
    try:
      out = torch_case(spec, spec["route"])
    except Exception as e:  # pylint: disable=broad-except  # a failed peer is a row, not a crash
      out = {"error": f"{type(e).__name__}: {e}"[:500]}
    with open(spec_path + ".rows", "a") as f:
      f.write(json.dumps({"case": spec["case"], "route": spec["route"], **out}) + "\n")


def run_torch(cases: list[Case], routes: list[str], args) -> list[dict]:
  """Runs the peers in one child process (its own CUDA context), eager rows first."""
  specs = []
  for route in routes:
    for case in cases:
      fam = registry.get_family(case.family)
      cfg = fam.config_cls().replace(**case.overrides)
      batch = _batch(case, cfg.vocab_size, np.random.default_rng(0))
      specs.append({"case": case.name, "route": route, "family": case.family,
                    "model": dataclasses.asdict(cfg), "dtype": args.dtype,
                    "batch": {k: v.tolist() for k, v in batch.items()},
                    "steps": args.steps, "warmup": args.warmup})
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "torch_spec.json")
    with open(path, "w") as f:
      json.dump(specs, f)
    error = None
    try:
      proc = subprocess.run(
          [sys.executable, "-m", "experiments.bench_gpu", "--_torch_worker", path],
          capture_output=True, text=True, timeout=args.torch_timeout,
          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      if proc.returncode != 0:
        error = proc.stderr[-2000:]
    except subprocess.TimeoutExpired:
      error = f"PyTorch peers stopped after --torch_timeout={args.torch_timeout} s"
    rows = []
    if os.path.exists(path + ".rows"):
      with open(path + ".rows") as f:
        rows = [json.loads(l) for l in f if l.strip()]
  if error:
    rows.append({"route": "torch", "error": error})
  return rows


# ------------------------------------------------------------------------------------------ main

def peak_tflops(args, device_kind: str) -> tuple[float | None, str]:
  if args.peak_tflops:
    return args.peak_tflops, "--peak_tflops"
  for frag, peak in PEAK_BF16_TFLOPS.items():
    if frag.lower() in device_kind.lower():
      return peak, f"table: {frag} dense bf16"
  return None, "unknown device: pass --peak_tflops"


def ratios(rows: list[dict]) -> dict:
  """Per case: our best examples/s over each PyTorch route's."""
  out = {}
  for case in sorted({r["case"] for r in rows if "examples_per_s" in r}):
    ok = [r for r in rows if r.get("case") == case and "examples_per_s" in r]
    ours = max((r["examples_per_s"] for r in ok if r["route"] == "jax"), default=None)
    for r in ok:
      if r["route"] != "jax" and ours:
        out[f"{case}/jax_best_over_{r['route']}"] = ours / r["examples_per_s"]
  return out


def parse(argv):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="results/bench/gpu.json", help="JSON written here")
  ap.add_argument("--cases", default=",".join(CASES))
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  ap.add_argument("--batch", type=int, default=0, help="0: each case's own")
  ap.add_argument("--seq_len", type=int, default=0, help="0: each case's own")
  ap.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=3, help="steps before timing, the compile first")
  ap.add_argument("--torch", default="eager,compile", help="none | eager | compile | both")
  ap.add_argument("--torch_timeout", type=int, default=360, help="seconds for all peers")
  ap.add_argument("--peak_tflops", type=float, default=0.0, help="device peak (default: table)")
  ap.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke run")
  ap.add_argument("--_torch_worker", default="", help=argparse.SUPPRESS)
  return ap.parse_args(argv)


def _write(path: str, record: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)  # a killed run leaves the last complete file


def main(argv=None) -> dict:
  args = parse(argv)
  if args._torch_worker:  # pylint: disable=protected-access
    _torch_worker(args._torch_worker)  # pylint: disable=protected-access
    return {}
  cases = [case_for(n, args) for n in args.cases.split(",") if n]
  dev = jax.devices()[0]
  peak, peak_source = peak_tflops(args, dev.device_kind)
  record = {"device": dev.device_kind, "backend": jax.default_backend(),
            "host_cpu": cost.host_cpu_name(), "jax": jax.__version__, "dtype": args.dtype,
            "peak_tflops": peak, "peak_source": peak_source, "steps": args.steps,
            "warmup": args.warmup, "tiny": args.tiny, "rows": [],
            "command": " ".join(["python -m experiments.bench_gpu"]
                                + list(sys.argv[1:] if argv is None else argv))}
  routes = [] if args.torch == "none" else [
      f"torch_{r}" for r in (("eager", "compile") if args.torch == "both" else
                             args.torch.split(","))]
  if set(routes) - {"torch_eager", "torch_compile"}:
    raise SystemExit(f"--torch={args.torch}: use none, eager, compile, eager,compile or both")
  if routes and not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
    print("torch / transformers not importable: JAX routes only", file=sys.stderr)
    routes = []
  for case in cases:  # ours first: a window that closes early still has them
    for attn in case.attentions:
      record["rows"].append(_jax_row(case, attn, args, peak))
      record["ratios"] = ratios(record["rows"])
      _write(args.out, record)
  if routes:
    flops = {c.name: _case_flops(c) for c in cases}
    for r in run_torch(cases, routes, args):
      case = next((c for c in cases if c.name == r.get("case")), None)
      if case is None or "error" in r:
        record["rows"].append(r)
        continue
      record["rows"].append(_row(case, r.pop("route"), "sdpa", args, r.pop("step_s"),
                                 flops[case.name], peak, **{k: v for k, v in r.items()
                                                            if k != "case"}))
    record["ratios"] = ratios(record["rows"])
    _write(args.out, record)
  _print(record)
  return record


def _jax_row(case: Case, attn: str, args, peak) -> dict:
  """`run_jax`, its failure as a row; cuDNN attention that fails is retried with XLA's."""
  try:
    return run_jax(case, attn, args, peak)
  except Exception as e:  # pylint: disable=broad-except  # e.g. no cuDNN kernel for a shape
    error = f"{type(e).__name__}: {e}"[:500]
  if attn == "dpa" and jax.default_backend() == "gpu":
    try:
      return dict(run_jax(case, attn, args, peak, implementation="xla"), cudnn_error=error)
    except Exception as e:  # pylint: disable=broad-except
      error += f"; xla: {type(e).__name__}: {e}"[:500]
  return {"case": case.name, "route": "jax", "attention": attn, "error": error}


def _case_flops(case: Case) -> float:
  fam = registry.get_family(case.family)
  cfg = fam.config_cls().replace(**case.overrides)
  kw = {"num_labels": NUM_LABELS} if case.family == "bert" else {}
  return float(fam.analytic_flops(cfg, case.batch, case.seq_len, True, **kw))


def _print(record: dict) -> None:
  print(f"{record['device']} ({record['backend']}), {record['dtype']}, peak "
        f"{record['peak_tflops']} TFLOP/s ({record['peak_source']})")
  for r in record["rows"]:
    if "error" in r:
      print(f"  {r.get('case', '?'):13s} {r.get('route', '?'):14s} ERROR {r['error'][:120]}")
      continue
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"  {r['case']:13s} {r['route']:14s} {r['attention']:6s} b{r['batch']} s{r['seq_len']}: "
          f"{r['step_ms']:.2f} ms/step, {r['examples_per_s']:.1f} ex/s, "
          f"{r['tflops']:.2f} TFLOP/s, MFU {mfu}")
  for k, v in record.get("ratios", {}).items():
    print(f"  {k}: {v:.2f}x")


if __name__ == "__main__":
  main()
