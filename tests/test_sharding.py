"""Parameter sharding over the ("data", "fsdp") mesh: the rules, the config check, and sharded
training through the one loop == replicated training (losses and final params) on 4 host devices."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import smoke
from research.train import setup as setup_lib
from research.train import sharding
from research.train import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_rules_shard_the_largest_divisible_dim_of_big_kernels_and_embeddings():
  spec = sharding.leaf_spec
  assert spec("encoder/layer_0/mlp/up/kernel", (384, 1536), 4) == P(None, "fsdp")
  assert spec("encoder/layer_0/mlp/down/kernel", (1536, 384), 4) == P("fsdp", None)
  assert spec("encoder/embeddings/word/embedding", (30522, 384), 2) == P("fsdp", None)
  # 30522 is not divisible by 4: the next largest dim that is.
  assert spec("encoder/embeddings/word/embedding", (30522, 384), 4) == P(None, "fsdp")
  assert spec("decoder/embed/embedding", (49152, 576), 3) == P("fsdp", None)
  # Replicated: 1-D leaves, small leaves, no divisible dim, fsdp=1, paths the rule does not name.
  assert spec("encoder/layer_0/mlp/up/bias", (1536,), 4) == P()
  assert spec("head/kernel", (384, 3), 4) == P("fsdp", None)
  assert spec("head/kernel", (16, 3), 4) == P()        # under MIN_ELEMENTS
  assert spec("x/kernel", (33, 35), 2) == P()
  assert spec("encoder/layer_0/mlp/up/kernel", (384, 1536), 1) == P()
  assert spec("lora/encoder.layer_0.attn.query.kernel/scale", (), 4) == P()
  assert spec("encoder/layer_0/attn/query/kernel", (64, 64), 2, min_elements=10**6) == P()


def test_optimizer_moments_are_sharded_like_their_params():
  params = {"encoder": {"w": {"kernel": jnp.zeros((64, 32))}, "ln": {"scale": jnp.zeros(64)}}}
  state = step_lib.create_train_state(params, optax.adamw(1e-3), jax.random.PRNGKey(0))
  specs = sharding.tree_specs(state, 2)
  flat = {sharding.path_str(kp): s for kp, s in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, P))[0]}
  kernel = {k: s for k, s in flat.items() if k.endswith("w/kernel")}
  assert len(kernel) == 3, flat  # the param, Adam's mu and nu
  assert set(kernel.values()) == {P("fsdp", None)}
  assert all(s == P() for k, s in flat.items() if not k.endswith("w/kernel"))  # step, rng, counts


@pytest.mark.parametrize("fsdp, parallel, match", [
    (0, "jit", "train.fsdp"), (2, "pmap", "parallel='jit'"), (3, "jit", "divide")])
def test_check_config_rejects_a_bad_fsdp(fsdp, parallel, match):
  c = smoke.get_config()
  c.train.fsdp, c.train.parallel = fsdp, parallel
  with pytest.raises(ValueError, match=match):
    setup_lib.check_config(c)


# One subprocess per model family: 4 host devices, the smoke run replicated (fsdp=1) and sharded.
SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from configs import smoke
    from research import train
    from research.train import sharding

    assert jax.device_count() == 4, jax.devices()
    family, fsdp, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    placed, stepped = [], []
    is_shape = lambda x: isinstance(x, tuple)
    place, make = sharding.place, sharding.make_train_step
    def spy_place(tree, mesh):
      out = place(tree, mesh)
      placed.append(jax.tree.map(lambda x: x.addressable_shards[0].data.shape, out))
      return out
    def spy_make(*a, **kw):
      step = make(*a, **kw)
      def spied(state, batch, aux=None):
        state, metrics = step(state, batch, aux)
        stepped.append(jax.tree.map(lambda x: x.addressable_shards[0].data.shape, state.params))
        return state, metrics
      spied.lower, spied.num_devices = step.lower, step.num_devices
      return spied
    sharding.place, sharding.make_train_step = spy_place, spy_make

    config = smoke.get_config()
    if family == "llama":  # the causal-LM test's tiny decoder, byte tokenizer and toy records
      from research import data as data_lib
      from research.tasks import causal_lm
      from tests import test_causal_lm as lm
      splits = {"train": lm._records(48, 0), "validation": lm._records(12, 1),
                "test": lm._records(12, 2)}
      causal_lm.load_tokenizer = lambda config: lm._ByteTokenizer()
      data_lib.load = lambda name, config, split, **kw: splits[split]
      data_lib.info = lambda *a, **kw: type("Info", (), {"label_names": ("x", "y", "z")})()
      config.task, config.model.family = "causal_lm", "llama"
      config.model.overrides.update(dict(num_layers=2, hidden_size=32, num_heads=2,
                                         num_kv_heads=1, head_dim=16, intermediate_size=64,
                                         vocab_size=260))
      config.data.name, config.data.config = "financial_phrasebank", "allagree"
      config.data.max_length, config.data.buckets = 320, (320,)
      config.data.batch_size, config.data.eval_batch_size = 8, 16
      # Adam's g / sqrt(v) turns reassociation noise in near-zero gradients into steps of up to
      # lr: at the causal-LM test's 1e-2 one weight of 1024 moved 1.6e-5 apart; 1e-3 keeps 1e-5.
      config.optim.lr = 1e-3
    config.train.max_steps, config.train.eval_every, config.train.checkpoint_every = 4, 4, 4

    def run(f):
      config.workdir, config.train.fsdp = f"{root}/fsdp{f}", f
      train.run(config)
      lines = [json.loads(l) for l in open(f"{root}/fsdp{f}/metrics.jsonl")]
      return ([l["loss"] for l in lines if l["split"] == "train"],
              train.load_run_params(config.workdir)[0])

    ref, ref_params = run(1)
    losses, params = run(fsdp)
    print("LOSSES", ref, losses)
    assert len(ref) == 4 and np.isfinite(ref).all()
    np.testing.assert_allclose(losses, ref, rtol=0, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), params,
                 ref_params)
    # The run really was sharded: big kernels split 1/fsdp per device, before and after a step.
    state_shapes = jax.tree.map(lambda x: x.shape, params)
    shard_shapes = placed[0].params
    split = [k for k, (a, b) in enumerate(zip(jax.tree.leaves(state_shapes, is_leaf=is_shape),
                                              jax.tree.leaves(shard_shapes, is_leaf=is_shape)))
             if np.prod(a) == fsdp * np.prod(b) and np.prod(a) > 1]
    assert len(split) >= 4, shard_shapes
    assert stepped[-1] == shard_shapes
    print("SHARDED", len(split), "of", len(jax.tree.leaves(params)), "leaves; OK")
""")


@pytest.mark.parametrize("family, fsdp", [("bert", 2), ("llama", 4)])
def test_sharded_training_equals_replicated_training(tmp_path, family, fsdp):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4 "
             "--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", SCRIPT, family, str(fsdp), str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  out = proc.stdout + proc.stderr[-4000:]
  assert proc.returncode == 0 and "OK" in proc.stdout, out[-6000:]
