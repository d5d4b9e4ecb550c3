"""experiments/bench_gpu.py runs on CPU at tiny shapes and writes its JSON (times never asserted).

The PyTorch eager peer runs when torch and transformers are importable; torch.compile is left to
the GPU run (minutes of compiling on this CPU).
"""

import importlib.util
import json

import pytest

from experiments import bench_gpu

_TORCH = (importlib.util.find_spec("torch") is not None
          and importlib.util.find_spec("transformers") is not None)


def test_peak_comes_from_the_flag_or_the_device_name():
  args = bench_gpu.parse([])
  assert bench_gpu.peak_tflops(args, "NVIDIA H200")[0] == 989.0
  assert bench_gpu.peak_tflops(args, "NVIDIA A100-SXM4-80GB")[0] == 312.0
  assert bench_gpu.peak_tflops(args, "cpu")[0] is None
  assert bench_gpu.peak_tflops(bench_gpu.parse(["--peak_tflops=50"]), "cpu")[0] == 50.0


def test_tiny_cpu_run_writes_every_row(tmp_path):
  out = tmp_path / "bench.json"
  bench_gpu.main(["--tiny", "--steps=2", "--warmup=1", "--dtype=float32",
                  "--cases=minilm_l6,smollm2_135m", "--peak_tflops=1",
                  f"--torch={'eager' if _TORCH else 'none'}", f"--out={out}"])
  record = json.loads(out.read_text())
  rows = {(r["case"], r["route"], r["attention"]): r for r in record["rows"]}
  assert not [r for r in record["rows"] if "error" in r], record["rows"]
  want = {("minilm_l6", "jax", "ours"), ("minilm_l6", "jax", "dpa"),
          ("smollm2_135m", "jax", "ours")}
  if _TORCH:
    want |= {("minilm_l6", "torch_eager", "sdpa"), ("smollm2_135m", "torch_eager", "sdpa")}
  assert set(rows) == want
  for r in rows.values():
    assert r["examples_per_s"] > 0 and r["step_tflop"] > 0
    assert r["mfu"] == pytest.approx(r["tflops"] / 1.0)
  # The dot_product_attention swap keeps the model: same params, same batch, same losses.
  assert rows["minilm_l6", "jax", "dpa"]["loss"] == pytest.approx(
      rows["minilm_l6", "jax", "ours"]["loss"], abs=1e-5)
  assert rows["minilm_l6", "jax", "dpa"]["attention_impl"] == "xla"  # cuDNN only on a GPU
  # Both routes count the same FLOPs for a case (one analytic count per shape).
  if _TORCH:
    assert (rows["minilm_l6", "torch_eager", "sdpa"]["step_tflop"]
            == rows["minilm_l6", "jax", "ours"]["step_tflop"])
    assert set(record["ratios"]) == {"minilm_l6/jax_best_over_torch_eager",
                                     "smollm2_135m/jax_best_over_torch_eager"}
  assert record["backend"] == "cpu" and record["host_cpu"]
