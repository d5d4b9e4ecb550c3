"""Model families behind one interface: the mask rules, slicing and import read only the family."""

import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from research import masking
from research.models import decoder
from research.models import registry
from tests.fixtures import tiny_qwen2

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = decoder.DecoderConfig(vocab_size=64, hidden_size=16, num_layers=4, num_heads=2,
                             num_kv_heads=1, head_dim=8, intermediate_size=32,
                             max_position_embeddings=32, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tiny():
  return decoder.init_params(TINY, jax.random.PRNGKey(0))


def test_mask_rules_on_the_decoder_layout(tiny):
  lay = registry.get_family("llama").layout(TINY)
  rules = {r: masking.trainable_paths(tiny, r, k=1, layout=lay)
           for r in ("full", "head_only", "last_k", "bitfit")}
  assert rules["head_only"] == {"decoder/final_norm/scale"}  # tied embeddings stay frozen
  assert {p for p in rules["last_k"] if "layer_" in p} == {
      p for p in rules["full"] if p.startswith("decoder/layer_3/")}
  assert rules["bitfit"] == {p for p in rules["full"] if p.endswith("_norm/scale")}  # norm-only
  assert "decoder/embed/embedding" not in rules["last_k"] | rules["bitfit"]


def test_lora_targets_the_decoder_projections(tiny):
  mask_cfg = dict(rule="lora", k=1, regex="", lora_rank=2, lora_alpha=4.0,
                  lora_targets=r"attn/(q|v)$")
  import ml_collections  # pylint: disable=g-import-not-at-top
  params, labels = masking.prepare(tiny, ml_collections.ConfigDict(mask_cfg),
                                   jax.random.PRNGKey(1),
                                   layout=registry.get_family("llama").layout(TINY))
  trained = {p for p, l in masking.flatten(labels).items() if l == masking.TRAINABLE}
  assert {p.split("/")[1] for p in trained if p.startswith("lora/")} == {
      f"decoder.layer_{i}.attn.{x}" for i in range(4) for x in "qv"}


def test_slice_layers_keeps_embeddings_and_renumbers(tiny):
  fam = registry.get_family("llama")
  student, cfg = fam.slice_layers(tiny, TINY, (0, 3))
  assert cfg.num_layers == 2 and sorted(student["decoder"]) == [
      "embed", "final_norm", "layer_0", "layer_1"]
  np.testing.assert_array_equal(student["decoder"]["layer_1"]["mlp"]["up"]["kernel"],
                                tiny["decoder"]["layer_3"]["mlp"]["up"]["kernel"])
  out = fam.bind(fam.classifier(cfg))(student, {"input_ids": np.ones((1, 5), np.int32)})
  assert out["logits"].shape == (1, 5, 64)


def test_family_interface_is_complete_for_every_family(tiny):
  for name, cfg in (("bert", registry.get_family("bert").config_cls()), ("llama", TINY)):
    fam = registry.get_family(name)
    assert fam.analytic_flops(cfg, 2, 16, True) > fam.analytic_flops(cfg, 2, 16, False) > 0
    assert fam.shape_key(dataclasses.asdict(cfg))
    assert fam.layout(cfg).layer_index(fam.layout(cfg).layer_format.format(i=3) + "/x") == 3


def test_registry_loads_a_qwen2_folder_by_model_type(tmp_path):
  cfg, params = registry.load_hf(tiny_qwen2.write(tmp_path / "qwen2_tiny"))
  assert isinstance(cfg, decoder.DecoderConfig) and cfg.attention_bias
  assert "decoder" in params
