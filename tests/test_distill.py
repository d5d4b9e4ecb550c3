"""Tests for research/distill.py on small numpy pytrees (no model needed)."""

import dataclasses

import numpy as np
import pytest

from research import distill


@dataclasses.dataclass(frozen=True)
class Cfg:
  """Stand-in with EncoderConfig's size fields and `replace`."""
  vocab_size: int = 11
  hidden_size: int = 8
  num_layers: int = 6
  num_heads: int = 2
  intermediate_size: int = 16
  num_labels: int = 3

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)


def _dense(rng, i, o):
  return {"kernel": rng.normal(size=(i, o)).astype(np.float32),
          "bias": rng.normal(size=(o,)).astype(np.float32)}


def _params(cfg: Cfg, seed=0):
  rng = np.random.default_rng(seed)
  d, f = cfg.hidden_size, cfg.intermediate_size
  ln = lambda: {"scale": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)}
  enc = {"embeddings": {"word": {"embedding": rng.normal(size=(cfg.vocab_size, d))},
                        "ln": ln()},
         "pooler": _dense(rng, d, d)}
  for i in range(cfg.num_layers):
    enc[f"layer_{i}"] = {"attn": {n: _dense(rng, d, d) for n in ("query", "key", "value", "out")},
                         "attn_ln": ln(),
                         "mlp": {"up": _dense(rng, d, f), "down": _dense(rng, f, d)},
                         "mlp_ln": ln()}
  return {"encoder": enc, "head": _dense(rng, d, cfg.num_labels)}


def test_layer_choices():
  assert distill.every_other(6) == (0, 2, 4)
  assert distill.every_other(12) == (0, 2, 4, 6, 8, 10)
  assert distill.first_k(2) == (0, 1)


def test_select_layers_copies_and_renumbers():
  cfg = Cfg()
  teacher = _params(cfg)
  student, scfg = distill.select_layers(teacher, cfg, (1, 3, 5))
  assert scfg == cfg.replace(num_layers=3)
  enc = student["encoder"]
  assert sorted(enc) == ["embeddings", "layer_0", "layer_1", "layer_2", "pooler"]
  for i, j in enumerate((1, 3, 5)):
    np.testing.assert_array_equal(enc[f"layer_{i}"]["mlp"]["up"]["kernel"],
                                  teacher["encoder"][f"layer_{j}"]["mlp"]["up"]["kernel"])
  np.testing.assert_array_equal(enc["embeddings"]["word"]["embedding"],
                                teacher["encoder"]["embeddings"]["word"]["embedding"])
  np.testing.assert_array_equal(student["head"]["bias"], teacher["head"]["bias"])
  np.testing.assert_array_equal(enc["pooler"]["kernel"], teacher["encoder"]["pooler"]["kernel"])
  # Copies, not views: changing the student leaves the frozen teacher intact.
  enc["layer_0"]["attn"]["query"]["kernel"][:] = 0.0
  assert np.any(teacher["encoder"]["layer_1"]["attn"]["query"]["kernel"] != 0.0)


def test_select_layers_errors():
  cfg = Cfg()
  teacher = _params(cfg)
  with pytest.raises(ValueError, match=r"teacher layers \[6\] out of range.*0\.\.5"):
    distill.select_layers(teacher, cfg, (0, 6))
  with pytest.raises(ValueError, match="no layers given"):
    distill.select_layers(teacher, cfg, ())
  with pytest.raises(ValueError, match="repeat"):
    distill.select_layers(teacher, cfg, (1, 1))
  with pytest.raises(ValueError, match="merge_lora"):
    distill.select_layers({**teacher, "lora": {}}, cfg, (0,))
  with pytest.raises(ValueError, match="different models"):
    distill.select_layers(teacher, cfg.replace(num_layers=7), (0,))


def test_fresh_student():
  cfg = Cfg()
  small = distill.fresh_student(cfg, num_layers=2, hidden_size=4, num_heads=0)
  assert (small.num_layers, small.hidden_size, small.num_heads) == (2, 4, 2)
  assert small.vocab_size == cfg.vocab_size
  with pytest.raises(ValueError, match=r"unknown size field\(s\) \['layers'\]"):
    distill.fresh_student(cfg, layers=2)
  with pytest.raises(ValueError, match="not divisible"):
    distill.fresh_student(cfg, hidden_size=5)


def test_compatibility_and_layer_map_checks():
  t = Cfg()
  s = t.replace(num_layers=3)
  distill.check_compatible(s, t)
  with pytest.raises(ValueError, match="vocab_size 12 != teacher vocab_size 11"):
    distill.check_compatible(s.replace(vocab_size=12), t)
  with pytest.raises(ValueError, match="num_labels 2 != teacher num_labels 3"):
    distill.check_compatible(s.replace(num_labels=2), t)
  distill.check_layer_map((1, 3, 5), 3, 6)
  with pytest.raises(ValueError, match=r"teacher layers \[6\] out of range"):
    distill.check_layer_map((1, 3, 6), 3, 6)
  with pytest.raises(ValueError, match="student has 3 layers"):
    distill.check_layer_map((0, 1, 2, 3), 3, 6)
  with pytest.raises(ValueError, match="out of range"):
    distill.check_setup(student_cfg=s, teacher_cfg=t, losses={"ce": 0.5, "hidden_mse": 0.5},
                        layer_map=(0, 9, 1))
  with pytest.raises(ValueError, match="unknown loss name"):
    distill.check_setup(student_cfg=s, teacher_cfg=t, losses={"kl": 1.0})
  with pytest.raises(ValueError, match="cannot serve"):
    distill.check_setup(student_cfg=s, teacher_cfg=t, losses={"attn_kl": 1.0}, cached_logits=True)
  assert distill.check_setup(student_cfg=s, teacher_cfg=t, losses={"ce": 0.0, "kd_kl": 1.0},
                             cached_logits=True) == {"kd_kl": 1.0}


def test_check_teacher_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    distill.check_teacher_dir(tmp_path / "nope")
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=r"lacks \['model.safetensors'\]"):
    distill.check_teacher_dir(tmp_path)
  with pytest.raises(FileNotFoundError, match="lacks"):
    distill.check_setup(student_cfg=Cfg(), teacher_cfg=Cfg(), losses={"kd_kl": 1.0},
                        teacher_dirs=[str(tmp_path)])
  (tmp_path / "model.safetensors").write_bytes(b"")
  assert distill.check_teacher_dir(tmp_path) == tmp_path
  with pytest.raises(ValueError, match="no teacher given"):
    distill.check_teacher_dir("")


def test_teacher_logits_cache_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(10, 3)).astype(np.float32)  # the "teacher": logits by example index
  calls = []

  def apply_fn(params, batch):
    calls.append(1)
    return {"logits": table[batch["index"]] * params}

  order = rng.permutation(10)
  batches = []
  for k in range(0, 12, 4):  # 3 batches of 4; the last has 2 padding rows (index 0, valid 0)
    idx = np.zeros(4, np.int32)
    valid = np.zeros(4, np.float32)
    chunk = order[k:k + 4]
    idx[:len(chunk)], valid[:len(chunk)] = chunk, 1.0
    batches.append({"index": idx, "valid": valid})
  path = distill.cache_teacher_logits(apply_fn, 2.0, batches, tmp_path / "cache" / "train",
                                      meta={"split": "train", "layers": (0, 2)})
  assert path.name == "train.npz" and len(calls) == 3
  cache = distill.load_teacher_logits(path, expect_meta={"split": "train", "layers": (0, 2)})
  np.testing.assert_array_equal(cache.index_N, np.arange(10))
  got = cache.lookup(np.array([7, 0, 3, 5]), np.array([1, 1, 1, 0]))
  np.testing.assert_allclose(got[:3], 2.0 * table[[7, 0, 3]])
  np.testing.assert_array_equal(got[3], 0.0)  # padding row
  with pytest.raises(KeyError, match=r"no entry for example index \[42\]"):
    cache.lookup(np.array([1, 42]))
  with pytest.raises(ValueError, match="stale"):
    distill.load_teacher_logits(path, expect_meta={"split": "validation"})
  with pytest.raises(FileNotFoundError, match="cache_teacher_logits"):
    distill.load_teacher_logits(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match="appears twice"):
    distill.cache_teacher_logits(apply_fn, 1.0, batches + batches[:1], tmp_path / "dup")
