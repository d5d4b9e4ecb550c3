"""ONNX export of encoder classifiers (research/export/onnx.py, experiments/export_onnx.py).

Needs the export extra (jax2onnx, onnx, onnxruntime); every test but the import one skips
without it.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 16


@pytest.fixture(name="ox")
def _ox():
  for mod in ("jax2onnx", "onnx", "onnx_ir", "onnxruntime"):
    pytest.importorskip(mod)
  from research.export import onnx as ox  # pylint: disable=g-import-not-at-top
  return ox


def tiny(pooling="mean"):
  cfg = encoder.EncoderConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                              intermediate_size=64, max_position_embeddings=32, num_labels=3,
                              pooling=pooling)
  ids = jnp.zeros((1, 8), jnp.int32)
  params = encoder.EncoderClassifier(cfg).init(jax.random.PRNGKey(0), ids, ids)["params"]
  return cfg, jax.tree_util.tree_map(np.asarray, params)


def jax_logits(cfg, params, batch):
  out = encoder.EncoderClassifier(cfg).apply(
      {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
  return np.asarray(out["logits"])


def batch(b, width, seed=0):
  """Random ids with ragged real lengths (row i keeps 2 + i*3 tokens, at most width)."""
  rng = np.random.default_rng(seed)
  lengths = np.minimum(2 + 3 * np.arange(b), width)
  mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(1, 100, (b, width)).astype(np.int32) * mask
  tt = (rng.random((b, width)) < 0.3).astype(np.int32) * mask
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt,
          "valid": np.ones(b, np.float32), "index": np.arange(b, dtype=np.int32)}


def test_module_imports_without_the_extra_and_names_the_install(monkeypatch):
  from research.export import onnx as ox  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` now raises ImportError
  with pytest.raises(ImportError, match=r"pip install --no-deps jax2onnx"):
    ox.require()


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_f32_logits_match_jax(tmp_path, ox, pooling):
  cfg, params = tiny(pooling)
  path = ox.export_classifier(params, cfg, tmp_path / "m.onnx", seq_len=WIDTH)
  sess = ox.session(path)
  assert ox.input_width(sess) == WIDTH
  for b, width in ((1, WIDTH), (5, WIDTH), (3, 7)):  # narrower batches are padded to WIDTH
    x = batch(b, width, seed=b)
    got = ox.logits(sess, x)
    assert got.shape == (b, 3) and got.dtype == np.float32
    assert np.abs(got - jax_logits(cfg, params, x)).max() <= 1e-4


def test_bf16_config_exports_the_f32_graph(tmp_path, ox):
  cfg, params = tiny()
  sess = ox.session(ox.export_classifier(params, cfg.replace(dtype="bfloat16"),
                                         tmp_path / "m.onnx", seq_len=WIDTH))
  x = batch(4, WIDTH)
  assert np.abs(ox.logits(sess, x) - jax_logits(cfg, params, x)).max() <= 1e-4


def test_int8_is_smaller_integer_and_close(tmp_path, ox):
  import onnx  # pylint: disable=g-import-not-at-top
  cfg, params = tiny()
  f32 = ox.export_classifier(params, cfg, tmp_path / "f32.onnx", seq_len=WIDTH)
  int8 = ox.quantize_int8(f32, tmp_path / "int8.onnx")
  ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
  assert "MatMulInteger" in ops and "MatMul" not in ops
  assert int8.stat().st_size < 0.7 * f32.stat().st_size
  x = batch(6, WIDTH)
  ref, got = ox.logits(ox.session(f32), x), ox.logits(ox.session(int8), x)
  assert np.all(np.isfinite(got))
  assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


def test_predict_keeps_real_rows_and_benchmark_reports(tmp_path, ox):
  cfg, params = tiny()
  sess = ox.session(ox.export_classifier(params, cfg, tmp_path / "m.onnx", seq_len=WIDTH))
  b1, b2 = batch(4, WIDTH), batch(4, 8, seed=1)
  b2["valid"][2:], b2["index"] = 0, np.array([4, 5, -1, -1], np.int32)
  pred = ox.predict(sess, [b1, b2])
  np.testing.assert_array_equal(pred["index"], np.arange(6))
  assert np.abs(pred["logits"][4:] - jax_logits(cfg, params, b2)[:2]).max() <= 1e-4
  with pytest.raises(ValueError, match="exceeds the exported width"):
    ox.logits(sess, batch(1, WIDTH + 1))
  out = ox.benchmark(sess, iters=3, warmup=1, throughput_batch=4, throughput_iters=2, token=7)
  assert out["seq_len"] == WIDTH and out["throughput_batch_size"] == 4
  assert out["batch1_p50_ms"] > 0 and out["throughput_eps"] > 0


def test_export_onnx_cli_on_a_smoke_run(tmp_path, ox):
  """Train the smoke config, export its run dir: ONNX f32 accuracy equals the JAX test accuracy."""
  del ox
  from configs import smoke  # pylint: disable=g-import-not-at-top
  from research import train  # pylint: disable=g-import-not-at-top
  c = smoke.get_config()
  c.workdir = str(tmp_path / "run")
  c.train.max_steps, c.train.eval_every, c.train.checkpoint_every = 4, 4, 4
  c.tags.method, c.tags.task = "smoke_ft", "synthetic"
  train.run(c)
  out = tmp_path / "onnx.json"
  subprocess.run([sys.executable, "-m", "experiments.export_onnx", f"--run_dirs={c.workdir}",
                  f"--out={out}", f"--export_dir={tmp_path / 'models'}", "--seq_len=8",
                  "--iters=2", "--warmup=1", "--throughput_batch=4", "--throughput_iters=1",
                  "--rounds=1"],
                 check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
                 timeout=120)
  doc = json.loads(out.read_text())
  run = doc["runs"]["run"]
  assert (run["task"], run["method"], run["n_test"]) == ("synthetic", "smoke_ft", 64)
  assert run["onnx_f32_max_abs_diff"] <= 1e-4
  assert run["onnx_f32_acc"] == run["jax_acc"]
  assert run["onnx_int8_mb"] < run["onnx_f32_mb"]
  assert run["onnx_f32_speedup_vs_jax"] > 0 and run["jax_cpu_p50_ms"] > 0
  assert (run["onnx_seq_len"], run["onnx_eval_seq_len"]) == (8, 16)
  row = doc["rows"]["synthetic/smoke_ft"]
  assert row["onnx_n_seeds"] == 1 and row["onnx_int8_acc"] == run["onnx_int8_acc"]
  assert all(k.startswith("onnx_") for k in row)
  assert doc["host_cpu"] and doc["versions"]["onnxruntime"]
