"""Train steps: schedules, gradient accumulation, jit-mesh vs pmap on 2 devices, metrics."""

import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from research import metrics as metrics_lib
from research import train
from research.models import registry
from research.tasks import classification

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The top of the 2-device subprocess script.
SETUP = textwrap.dedent("""
    import jax, ml_collections, numpy as np
    from research import masking, train
    from research.models import registry
    from research.tasks import classification
    from research.models.encoder import EncoderClassifier, EncoderConfig

    CFG = EncoderConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3,
                        hidden_dropout=0.0, attention_dropout=0.0)
    OPTIM = ml_collections.ConfigDict(dict(lr=3e-3, weight_decay=0.01, warmup_ratio=0.25,
                                           schedule="linear", grad_clip=1.0, b1=0.9, b2=0.999))

    def batches(n=4, b=8, length=8):
      rng = np.random.RandomState(0)
      out = []
      for i in range(n):
        valid = np.ones(b, np.float32)
        if i == n - 1:
          valid[-3:] = 0  # a partial last batch: padding rows must not count
        out.append(dict(input_ids=rng.randint(1, 64, (b, length)).astype(np.int32),
                        attention_mask=(np.arange(length) < rng.randint(3, length + 1, (b, 1))
                                        ).astype(np.int32),
                        token_type_ids=np.zeros((b, length), np.int32),
                        label=rng.randint(0, 3, (b,)).astype(np.int32), valid=valid))
      return out

    MODEL = EncoderClassifier(CFG)
    PARAMS = masking._as_dict(
        jax.jit(MODEL.init)(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))["params"])

    def losses(parallel="jit", grad_accum=1, devices=None, rule="full"):
      model = MODEL
      params = jax.tree.map(np.array, PARAMS)  # the step donates the state's buffers
      labels = masking.make_labels(params, rule, k=1)
      tx, sched = train.make_optimizer(OPTIM, labels, 4)
      mesh = train.make_mesh(devices) if parallel == "jit" else None
      state = train.create_train_state(params, tx, jax.random.PRNGKey(1))
      state = train.place_state(state, parallel, mesh)
      step = train.make_train_step(classification.loss_fn(registry.get_family("bert").bind(model)), tx, grad_accum=grad_accum,
                                   parallel=parallel, mesh=mesh, trainable=labels,
                                   learning_rate_fn=sched)
      out = []
      for b in batches():
        state, m = step(state, b)
        out.append(float(m["loss"]))
      return np.array(out), jax.device_get(train.unplace_state(state, parallel).params)
""")


def test_schedules():
  def sched(kind, warmup=0.25):
    o = ml_collections.ConfigDict(dict(lr=1.0, warmup_ratio=warmup, schedule=kind))
    return np.array([float(train.make_schedule(o, 8)(s)) for s in range(9)])
  np.testing.assert_allclose(sched("linear"), [0, .5, 1, 5 / 6, 4 / 6, .5, 2 / 6, 1 / 6, 0],
                             atol=1e-6)
  np.testing.assert_allclose(sched("constant"), [0, .5] + [1] * 7, atol=1e-6)
  cos = sched("cosine", warmup=0.0)
  np.testing.assert_allclose(cos[[0, 4, 8]], [1, .5, 0], atol=1e-6)
  with pytest.raises(ValueError, match="optim.schedule"):
    sched("step")


def test_jit_mesh_pmap_and_grad_accum_on_two_devices_match_one_device():
  # One subprocess (2 host devices, fast compiles). Reference: jit on 1 device, no accumulation;
  # both 2-device variants also split each device's rows into 2 accumulated micro-batches.
  script = SETUP + textwrap.dedent("""
      assert jax.device_count() == 2, jax.devices()
      one, one_params = losses("jit", devices=jax.devices()[:1])
      two, two_params = losses("jit", grad_accum=2)
      pm, pm_params = losses("pmap", grad_accum=2)
      print("LOSSES", list(one), list(two), list(pm))
      assert one[-1] < one[0] + 1.0  # trains without blowing up
      np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
      np.testing.assert_allclose(pm, one, rtol=0, atol=1e-5)
      for params in (two_params, pm_params):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                     params, one_params)
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 "
             "--xla_backend_optimization_level=0",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_bad_parallel_and_accum_raise():
  with pytest.raises(ValueError, match="train.parallel"):
    train.make_train_step(lambda *a: None, None, parallel="shard_map")
  with pytest.raises(ValueError, match="grad_accum"):
    train.make_train_step(lambda *a: None, None, grad_accum=0)


def test_classification_metrics():
  logits = np.array([[2, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2]], np.float32)
  out = metrics_lib.classification_metrics(logits, np.array([0, 1, 2, 2]),
                                           label_names=["a", "b", "c"])
  assert out["accuracy"] == 0.75
  # F1: a = 1, b = 2/3 (P 1/2, R 1), c = 2/3 (P 1, R 1/2).
  np.testing.assert_allclose(out["macro_f1"], (1 + 2 / 3 + 2 / 3) / 3)
  assert out["per_class"]["c"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                   "support": 2}
  ml = metrics_lib.classification_metrics(np.array([[1., -1.], [1., 1.]]),
                                          np.array([[1, 0], [1, 0]]), multilabel=True)
  assert ml["accuracy"] == 0.5 and ml["per_class"]["1"]["precision"] == 0.0
