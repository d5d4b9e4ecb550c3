"""experiments/bench_peer.py runs end to end on a tiny model (its numbers are a benchmark's, not
asserted beyond being positive)."""

import json
import os
import subprocess
import sys

import jax

from research.checkpoints import hf
from research.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_peer_writes_our_numbers_without_the_peer(tmp_path):
  _, params, cfg = registry.build_model(
      "bert", None, num_labels=3, random_init=True, rng=jax.random.PRNGKey(0),
      overrides=dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                     vocab_size=2000))
  registry.save_hf(params, cfg, tmp_path / "tiny", family="bert")
  out = tmp_path / "bench"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.bench_peer", f"--source={tmp_path / 'tiny'}",
       "--seq_len=16", "--batch=4", "--steps=2", "--warmup=0", "--peer=", f"--out={out}",
       "--rounds=2", "--profile", "--dtype=bf16"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "peer_bf16_s16_b4_L2.json").read_text())
  assert result["peer"] is None and result["ours"]["layers"] == 2
  assert len(result["rounds"]) == 2 and 0 <= result["steal_percent"] <= 100
  for key in ("train_examples_per_s", "infer_examples_per_s", "latency_b1_ms_p50"):
    assert result["ours"][key] > 0, key
    # the reported figure is the median of the rounds (two: their mean)
    assert abs(result["ours"][key] - sum(r["ours"][key] for r in result["rounds"]) / 2) < 1e-9
  assert "| train ex/s" in (out / "peer_bf16_s16_b4_L2.md").read_text()
  prof = json.loads((out / "peer_bf16_s16_b4_L2_profile.json").read_text())
  assert prof["kinds"] and abs(sum(k["share"] for k in prof["kinds"]) - 1) < 1e-6
  assert any(k["op"].startswith(("ynn_fusion", "dot", "xnn_fusion")) for k in prof["kinds"])
  assert isinstance(prof["dots_by_shape"], list)
