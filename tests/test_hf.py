"""HF checkpoint import/export, source resolution and their one-line errors."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from research.checkpoints import hf
from research.models import encoder
from research.models import registry

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm():
  return registry.load_hf(MINILM)


def _flat(params):
  out = {}
  def walk(tree, prefix):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        out[prefix + k] = np.asarray(v)
  walk(params, "")
  return out


def _assert_identical(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype == np.float32, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_minilm_param_count_and_layout(minilm):
  cfg, params = minilm
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == (6, 384, 12)
  # 22,713,216 float params including the pooler; `embeddings.position_ids` is not a param.
  assert registry.count_params(params) == 22_713_216
  assert "head" not in params
  enc = params["encoder"]
  assert enc["layer_0"]["mlp"]["up"]["kernel"].shape == (384, 1536)   # (in, out)
  raw = load_file(str(hf.resolve_source(MINILM) / "model.safetensors"))
  np.testing.assert_array_equal(enc["layer_2"]["attn"]["value"]["kernel"],
                                raw["encoder.layer.2.attention.self.value.weight"].T)


def test_round_trip_is_bit_identical(minilm, tmp_path):
  cfg, params = minilm
  registry.save_hf(params, cfg, tmp_path / "out")
  cfg2, params2 = registry.load_hf(tmp_path / "out")
  assert cfg2.replace(num_labels=cfg.num_labels) == cfg
  _assert_identical(params, params2)
  assert "encoder.layer.0.attention.self.query.weight" in load_file(
      str(tmp_path / "out" / "model.safetensors"))


def _with_head(minilm, pooling):
  cfg, params = minilm
  cfg = cfg.replace(num_labels=3, pooling=pooling)
  rng = np.random.default_rng(0)
  params = {**params, "head": {"kernel": rng.normal(size=(384, 3)).astype(np.float32),
                               "bias": rng.normal(size=(3,)).astype(np.float32)}}
  return cfg, params


def test_pooler_classifier_exports_as_bert_for_sequence_classification(minilm, tmp_path):
  cfg, params = _with_head(minilm, "pooler")
  out = registry.save_hf(params, cfg, tmp_path / "cls")
  names = load_file(str(out / "model.safetensors"))
  assert "bert.encoder.layer.5.output.dense.weight" in names and "classifier.weight" in names
  config = json.loads((out / "config.json").read_text())
  assert config["architectures"] == ["BertForSequenceClassification"]
  cfg2, params2 = registry.load_hf(out)
  assert cfg2 == cfg
  _assert_identical(params, params2)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_mean_and_cls_classifiers_are_not_labelled_as_a_transformers_classifier(
    minilm, tmp_path, pooling):
  """BertForSequenceClassification runs tanh(pooler(CLS)): a mean-pooled head is another function."""
  cfg, params = _with_head(minilm, pooling)
  out = registry.save_hf(params, cfg, tmp_path / pooling)
  config = json.loads((out / "config.json").read_text())
  assert config["architectures"] == ["BertModel"] and config["pooling"] == pooling
  names = load_file(str(out / "model.safetensors"))
  assert "encoder.layer.5.output.dense.weight" in names and "classifier.weight" in names
  cfg2, params2 = registry.load_hf(out)
  assert cfg2 == cfg
  _assert_identical(params, params2)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_exported_classifier_computes_our_logits_in_transformers(minilm, tmp_path, pooling):
  """The export's documented reading in transformers (torch, dev-only) gives our logits."""
  torch = pytest.importorskip("torch")
  import transformers  # pylint: disable=g-import-not-at-top
  cfg, params = _with_head(minilm, pooling)
  out = registry.save_hf(params, cfg, tmp_path / pooling)
  rng = np.random.default_rng(1)
  ids = rng.integers(1000, 5000, (3, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  model = encoder.EncoderClassifier(cfg)
  ours = np.asarray(model.apply({"params": params}, ids, mask, np.zeros_like(ids))["logits"])
  t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
  with torch.no_grad():
    if pooling == "pooler":
      hf_model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
      theirs = hf_model(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
    else:
      hf_model = transformers.AutoModel.from_pretrained(out).eval()
      h = hf_model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()
      m = mask[..., None].astype(np.float32)
      pooled = (h * m).sum(1) / m.sum(1) if pooling == "mean" else h[:, 0]
      w = load_file(str(out / "model.safetensors"))
      theirs = pooled @ w["classifier.weight"].T + w["classifier.bias"]
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", [MINILM, "all-MiniLM-L6-v2", "minilm-l6"])
def test_resolve_source_names_the_installed_wheel(name):
  folder = hf.resolve_source(name)
  assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
  assert folder == hf.resolve_source(MINILM)


def test_resolve_source_unknown_lists_what_was_tried(monkeypatch, tmp_path):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  with pytest.raises(FileNotFoundError) as e:
    hf.resolve_source("acme/no-such-model")
  msg = str(e.value)
  assert "\n" not in msg
  for part in ("'acme/no-such-model'", "local folder", "gt_no_such_model", "HF_HUB_OFFLINE"):
    assert part in msg


def test_error_folder_without_config(tmp_path):
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"has no config\.json") as e:
    registry.load_hf(tmp_path)
  assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def _tiny_checkpoint(folder):
  cfg = encoder.EncoderConfig(vocab_size=20, hidden_size=8, num_layers=1, num_heads=2,
                              intermediate_size=16, max_position_embeddings=12)
  rng = np.random.default_rng(0)
  config, tensors = hf.bert_to_hf(
      {"encoder": _random_encoder_params(cfg, rng)}, cfg)
  folder.mkdir()
  save_file(tensors, str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps(config))
  return cfg, config, tensors


def _random_encoder_params(cfg, rng):
  params = {}
  for path, _, _, shape in hf._bert_names(cfg):  # pylint: disable=protected-access
    hf.set_path(params, path, rng.normal(size=shape).astype(np.float32))
  return params


def test_error_tensor_with_wrong_shape(tmp_path):
  folder = tmp_path / "bad"
  _, _, tensors = _tiny_checkpoint(folder)
  name = "encoder.layer.0.intermediate.dense.weight"
  assert tensors[name].shape == (16, 8)
  tensors[name] = np.zeros((15, 8), np.float32)
  save_file(tensors, str(folder / "model.safetensors"))
  with pytest.raises(ValueError) as e:
    registry.load_hf(folder)
  msg = str(e.value)
  assert f"'{name}'" in msg and "(15, 8)" in msg and "(16, 8)" in msg
  assert str(folder / "model.safetensors") in msg and "\n" not in msg


def test_error_unknown_model_type(tmp_path):
  folder = tmp_path / "gpt"
  _, config, _ = _tiny_checkpoint(folder)
  config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'.*GPT2LMHeadModel.*'bert'"):
    registry.load_hf(folder)


def test_tiny_checkpoint_loads(tmp_path):
  cfg, _, tensors = _tiny_checkpoint(tmp_path / "ok")
  cfg2, params = registry.load_hf(tmp_path / "ok")
  assert cfg2.replace(num_labels=cfg.num_labels) == cfg
  np.testing.assert_array_equal(params["encoder"]["layer_0"]["mlp"]["down"]["kernel"],
                                tensors["encoder.layer.0.output.dense.weight"].T)
