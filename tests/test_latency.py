"""Tests for research.latency and experiments.bench_latency: per-shape timing cache across machines."""

import json

from absl import flags
from absl.testing import flagsaver
import pytest

from experiments import bench_latency
from research import latency
from research import report

_TINY = {"vocab_size": 1024, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
         "intermediate_size": 32, "max_position_embeddings": 16, "type_vocab_size": 2,
         "num_labels": 3}


@pytest.fixture
def parsed_flags():
  """bench_latency's flags, parsed for one test and reset after it."""
  flags.FLAGS.mark_as_parsed()
  yield
  flags.FLAGS.unparse_flags()


def _record(method, model):
  return {"domain": "d", "task": "t", "method": method, "seed": 0, "cell": f"t/{method}/seed0",
          "is_teacher": method == "teacher", "model": model, "params_total": 100,
          "params_trainable": 100, "metrics": {"test": {"accuracy": 0.9, "macro_f1": 0.9}}}


def test_shape_key_and_for_shape_orders_cpu_first():
  key = latency.shape_key(_TINY)
  assert key == "L1-D16-H2-F32-C3"
  cache = {f"{key}/gpu": {"device": "G"}, f"{key}/cpu": {"device": "cpu"},
           "L2-D16-H2-F32-C3/cpu": {"device": "other"}}
  assert [x["device"] for x in latency.for_shape(cache, key)] == ["cpu", "G"]


def test_bench_latency_fills_missing_shapes_and_keeps_other_machines(tmp_path, parsed_flags):
  (tmp_path / "cells").mkdir()
  small = dict(_TINY, num_layers=1)
  big = dict(_TINY, num_layers=2)
  for name, model in (("teacher", big), ("student", small)):
    (tmp_path / "cells" / f"{name}.json").write_text(json.dumps(_record(name, model)))
  # A GPU timing made elsewhere for the teacher's shape must survive and reach the table.
  gpu = {"device": "NVIDIA Test", "backend": "gpu", "batch1_p50_ms": 1.0, "batch1_p90_ms": 1.2,
         "throughput_eps": 5000.0, "throughput_batch_size": 8}
  (tmp_path / "latency.json").write_text(json.dumps({f"{latency.shape_key(big)}/gpu": gpu}))
  with flagsaver.flagsaver(results_dir=str(tmp_path), backends=["cpu"], iters=3, warmup=1,
                           throughput_batch=4, throughput_iters=2, seq_len=8):
    bench_latency.main([])
  cache = json.loads((tmp_path / "latency.json").read_text())
  assert set(cache) == {f"{latency.shape_key(m)}/{b}" for m in (big, small) for b in ("cpu",)} | {
      f"{latency.shape_key(big)}/gpu"}
  assert cache[f"{latency.shape_key(small)}/cpu"]["backend"] == "cpu"
  assert cache[f"{latency.shape_key(big)}/gpu"] == gpu
  records = [json.loads(f.read_text()) for f in sorted((tmp_path / "cells").glob("*.json"))]
  for r in records:
    r["latency"] = latency.for_shape(cache, latency.shape_key(r["model"]))
  rows = {r["method"]: r for r in report.aggregate(records)}
  assert rows["teacher"]["gpu_device"] == "NVIDIA Test"
  assert rows["teacher"]["gpu_latency_ms_p50"] == 1.0
  assert rows["student"]["cpu_latency_ms_p50"] > 0
  assert "GPU p50 ms" in report.table_markdown(list(rows.values()))


def test_bench_latency_rejects_unknown_backend(tmp_path, parsed_flags):
  (tmp_path / "cells").mkdir()
  (tmp_path / "cells" / "a.json").write_text(json.dumps(_record("teacher", _TINY)))
  with flagsaver.flagsaver(results_dir=str(tmp_path), backends=["tpu"]):
    with pytest.raises(Exception, match="not available here"):
      bench_latency.main([])


def test_bench_latency_names_empty_folder(tmp_path, parsed_flags):
  with flagsaver.flagsaver(results_dir=str(tmp_path)):
    with pytest.raises(Exception, match="no records"):
      bench_latency.main([])
