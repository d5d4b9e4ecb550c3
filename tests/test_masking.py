"""Mask rules, counts, LoRA add/merge, and that training leaves frozen params bit-identical."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import masking
from research.models.encoder import EncoderClassifier, EncoderConfig

MINILM = EncoderConfig(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                       intermediate_size=1536, num_labels=3)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = EncoderConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=3,
                     hidden_dropout=0.0, attention_dropout=0.0)


def _abstract_params(cfg):
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: EncoderClassifier(cfg).init(jax.random.PRNGKey(0), ids))
  return masking._as_dict(shapes["params"])


def _init(model, ids):
  return masking._as_dict(jax.jit(model.init)(jax.random.PRNGKey(0), ids)["params"])


def _trainable(params, rule, **kw):
  return masking.trainable_paths(params, rule, **kw)


def test_rules_choose_expected_paths():
  p = _abstract_params(TINY)
  paths = set(masking.flatten(p))
  assert _trainable(p, "full") == paths
  assert _trainable(p, "head_only") == {"head/kernel", "head/bias"}
  assert _trainable(p, "head_only", pooling="pooler") == {
      "head/kernel", "head/bias", "encoder/pooler/kernel", "encoder/pooler/bias"}
  last1 = _trainable(p, "last_k", k=1)
  assert {q for q in last1 if not q.startswith("head/")} == {
      q for q in paths if q.startswith("encoder/layer_1/")}
  assert _trainable(p, "last_k", k=0) == {"head/kernel", "head/bias"}
  bitfit = _trainable(p, "bitfit")
  assert "encoder/layer_0/attn/query/bias" in bitfit
  assert "encoder/layer_0/attn_ln/scale" in bitfit
  assert "encoder/embeddings/ln/scale" in bitfit
  assert "head/kernel" in bitfit
  assert not any(q.endswith("/kernel") or q.endswith("/embedding")
                 for q in bitfit - {"head/kernel"})
  assert _trainable(p, "regex", regex=r"layer_0/mlp/") == {
      q for q in paths if q.startswith("encoder/layer_0/mlp/")}


def test_last_k_count_matches_hand_count():
  p = _abstract_params(MINILM)
  counts = masking.count(p, masking.make_labels(p, "last_k", k=2))
  d, f, c = 384, 1536, 3
  per_layer = (4 * (d * d + d)        # query, key, value, out
               + (d * f + f) + (f * d + d)  # mlp up, down
               + 2 * 2 * d)               # attn_ln, mlp_ln (scale + bias)
  assert per_layer == 1_774_464
  assert counts["params_trainable"] == 2 * per_layer + d * c + c == 3_550_083
  assert counts["bytes_trainable"] == 4 * counts["params_trainable"]
  full = masking.count(p)
  assert counts["params_total"] == full["params_total"] == full["params_trainable"]


@pytest.mark.parametrize("rule,kw,match", [
    ("last_k", dict(k=7), r"mask.k=7 but the model has 6 layers"),
    ("last_k", dict(k=-1), r"mask.k=-1"),
    ("regex", dict(regex=r"no_such_module"), r"matches no parameter"),
    ("regex", dict(regex=""), r"needs a pattern"),
    ("regex", dict(regex="("), r"not a valid regular expression"),
    ("lora", {}, r"add_lora"),
    ("everything", {}, r"unknown"),
])
def test_bad_rules_raise(rule, kw, match):
  with pytest.raises(ValueError, match=match):
    masking.make_labels(_abstract_params(MINILM), rule, **kw)


def test_lora_targets_that_match_nothing_raise():
  p = _abstract_params(TINY)
  with pytest.raises(ValueError, match="matches no 2-D kernel"):
    jax.eval_shape(lambda q: masking.add_lora(q, 2, 4.0, "attn/nothing", jax.random.PRNGKey(0)),
                   p)


def test_add_and_merge_lora():
  ids = jnp.zeros((1, 8), jnp.int32)
  params = _init(EncoderClassifier(TINY), ids)
  lp = masking.add_lora(params, 4, 8.0, r"attn/(query|value)", jax.random.PRNGKey(1))
  assert sorted(lp["lora"]) == [f"encoder.layer_{i}.attn.{m}" for i in range(2)
                                for m in ("query", "value")]
  ad = lp["lora"]["encoder.layer_1.attn.value"]
  assert ad["a"].shape == (16, 4) and ad["b"].shape == (4, 16) and float(ad["scale"]) == 2.0
  # b = 0: merging is the identity.
  merged = masking.merge_lora(lp)
  assert "lora" not in merged
  jax.tree.map(np.testing.assert_array_equal, merged, params)
  ad["b"] = jnp.ones_like(ad["b"])
  merged = masking.merge_lora(lp)
  kernel = params["encoder"]["layer_1"]["attn"]["value"]["kernel"]
  np.testing.assert_allclose(merged["encoder"]["layer_1"]["attn"]["value"]["kernel"],
                             kernel + 2.0 * ad["a"] @ ad["b"], rtol=1e-6)
  labels = masking.make_labels(lp, "lora")
  trainable = {p for p, l in masking.flatten(labels).items() if l == masking.TRAINABLE}
  assert trainable == {f"lora/{m}/{x}" for m in lp["lora"] for x in ("a", "b")} | {
      "head/kernel", "head/bias"}
  with pytest.raises(ValueError, match="twice"):
    masking.add_lora(lp, 4, 8.0, "attn/query", jax.random.PRNGKey(1))


# Trains the tiny encoder a few steps under every rule (one subprocess with fast XLA compiles) and
# reports, per rule, which leaves changed and how many numbers the optimizer state holds.
TRAIN_EVERY_RULE = textwrap.dedent("""
    import json, sys
    import jax, ml_collections, numpy as np
    from research import masking, train
    from research.models.encoder import EncoderClassifier, EncoderConfig
    from research.models import registry
    from research.tasks import classification

    cfg = EncoderConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3,
                        hidden_dropout=0.0, attention_dropout=0.0)
    model = EncoderClassifier(cfg)
    rng = np.random.RandomState(0)
    batch = dict(input_ids=rng.randint(1, 64, (8, 8)).astype(np.int32),
                 attention_mask=np.ones((8, 8), np.int32),
                 token_type_ids=np.zeros((8, 8), np.int32),
                 label=rng.randint(0, 3, (8,)).astype(np.int32))
    init = jax.jit(model.init)(jax.random.PRNGKey(0), batch["input_ids"])["params"]
    optim = ml_collections.ConfigDict(dict(lr=1e-2, weight_decay=0.01, warmup_ratio=0.0,
                                           schedule="constant", grad_clip=1.0, b1=0.9, b2=0.999))
    out = {}
    for rule in masking.RULES:
      mask_cfg = ml_collections.ConfigDict(dict(
          rule=rule, k=1, regex=r"layer_0/mlp/|^head/", lora_rank=2, lora_alpha=4.0,
          lora_targets=r"attn/(query|value)"))
      params = jax.tree.map(np.array, masking._as_dict(init))
      params, labels = masking.prepare(params, mask_cfg, jax.random.PRNGKey(1))
      before = {p: np.array(x) for p, x in masking.flatten(params).items()}
      tx, _ = train.make_optimizer(optim, labels, 4)
      state = train.place_state(train.create_train_state(params, tx, jax.random.PRNGKey(2)), "jit")
      step = train.make_train_step(classification.loss_fn(registry.get_family("bert").bind(model)), tx, trainable=labels)
      for _ in range(3):
        state, _ = step(state, batch)
      after = jax.device_get(masking.flatten(state.params))
      out[rule] = dict(
          labels=masking.flatten(labels),
          changed=[p for p in before if before[p].tobytes() != after[p].tobytes()],
          state_numbers=int(sum(np.size(x) for x in jax.tree.leaves(state.opt_state)
                                if np.ndim(x) > 0)),
          trainable_numbers=masking.count(params, labels)["params_trainable"])
    json.dump(out, open(sys.argv[1], "w"))
""")


@pytest.fixture(scope="module")
def trained_every_rule(tmp_path_factory):
  path = tmp_path_factory.mktemp("rules") / "out.json"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0")
  proc = subprocess.run([sys.executable, "-c", TRAIN_EVERY_RULE, str(path)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(path.read_text())


@pytest.mark.parametrize("rule", masking.RULES)
def test_training_freezes_exactly_the_frozen_leaves(trained_every_rule, rule):
  out = trained_every_rule[rule]
  changed = set(out["changed"])
  frozen = {p for p, l in out["labels"].items() if l == masking.FROZEN}
  trainable = set(out["labels"]) - frozen
  assert not frozen & changed, sorted(frozen & changed)  # bit-identical
  # Every trainable leaf moved, except the pooler: unused with mean pooling (zero gradient, and
  # vectors get no weight decay).
  assert trainable - changed <= {"encoder/pooler/bias"}, sorted(trainable - changed)
  assert trainable & changed
  # Adam keeps two numbers per trainable parameter and nothing for frozen ones.
  assert out["state_numbers"] == 2 * out["trainable_numbers"]
