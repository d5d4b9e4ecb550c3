"""Decoder students -> GGUF (research/export/decoder_gguf.py, experiments/export_gguf.py): a
layer-sliced student round-trips through our importer with the same logits; the tokenizer metadata
comes from the template. (SmolLM2 itself, ~90 s here: `python -m experiments.export_gguf
--source=smollm2-135m-instruct --layers=0,29 --out=/tmp/s.gguf` gave max |diff| 0.0.)"""

import dataclasses
import json
import os
import subprocess
import sys

import gguf
import jax
import numpy as np
import pytest

from research.checkpoints import gguf as gguf_ckpt
from research.export import decoder_gguf
from research.models import decoder
from research.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A byte-level BPE vocabulary of 64 tokens (letters, the space marker, two merges, fillers).
TOKENS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", "ab", "Ġab"]
TOKENS += [f"<x{i}>" for i in range(64 - len(TOKENS))]


def tiny(**kw):
  base = dict(vocab_size=64, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2,
              head_dim=8, intermediate_size=64, max_position_embeddings=128,
              initializer_range=0.2, rope_theta=10000.0, rms_norm_eps=1e-6)
  return decoder.DecoderConfig(**{**base, **kw})


def template(path):
  """A GGUF holding only tokenizer metadata (what export copies)."""
  w = gguf.GGUFWriter(str(path), arch="llama")
  w.add_tokenizer_model("gpt2")
  w.add_token_list(TOKENS)
  w.add_token_merges(["a b", "Ġ ab"])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_chat_template("{{ messages[0]['content'] }}")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


@pytest.mark.parametrize("cfg", [tiny(), tiny(arch="qwen2", attention_bias=True,
                                               tie_word_embeddings=False)],
                         ids=["llama_tied", "qwen2_untied"])
def test_two_layer_slice_round_trips_with_same_logits(tmp_path, cfg):
  params = jax.tree_util.tree_map(np.asarray, decoder.init_params(cfg, jax.random.PRNGKey(0)))
  student, scfg = registry.get_family("llama").slice_layers(params, cfg, (0, 3))
  assert scfg.num_layers == 2
  path = decoder_gguf.export(student, scfg, tmp_path / "s.gguf",
                             template=template(tmp_path / "t.gguf"))
  ids = np.random.default_rng(0).integers(0, 64, (2, 9))
  out = decoder_gguf.round_trip(student, scfg, path, ids)
  assert out["num_layers"] == 2 and out["config_changes"] == {}
  assert out["max_abs_logit_diff"] <= 1e-5
  # The reloaded layer 1 is the source's layer 3.
  _, got = gguf_ckpt.load_gguf(path)
  np.testing.assert_array_equal(got["decoder"]["layer_1"]["mlp"]["up"]["kernel"],
                                params["decoder"]["layer_3"]["mlp"]["up"]["kernel"])
  fields = gguf.GGUFReader(str(path)).fields
  assert fields["tokenizer.ggml.tokens"].contents() == TOKENS
  assert fields["tokenizer.chat_template"].contents() == "{{ messages[0]['content'] }}"
  assert fields["general.name"].contents() == "research-decoder-student"


def test_load_student_from_a_gguf_source_slices(tmp_path):
  cfg = tiny()
  params = jax.tree_util.tree_map(np.asarray, decoder.init_params(cfg, jax.random.PRNGKey(1)))
  src = gguf_ckpt.save_gguf(params, cfg, tmp_path / "src.gguf")
  student, scfg, origin = decoder_gguf.load_student(source=str(src), layers=(1, 2))
  assert scfg.num_layers == 2 and origin == str(src)
  np.testing.assert_array_equal(student["decoder"]["layer_0"]["attn"]["q"]["kernel"],
                                params["decoder"]["layer_1"]["attn"]["q"]["kernel"])
  with pytest.raises(ValueError, match="exactly one"):
    decoder_gguf.load_student()
  with pytest.raises(FileNotFoundError, match="tokenizer template"):
    decoder_gguf.export(student, scfg, tmp_path / "x.gguf", template=tmp_path / "missing.gguf")


def _cli(*args, timeout=120):
  subprocess.run([sys.executable, "-m", "experiments.export_gguf", *args], check=True, cwd=ROOT,
                 timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))


def test_cli_slices_a_gguf_source_and_checks_the_round_trip(tmp_path):
  cfg = tiny()
  params = jax.tree_util.tree_map(np.asarray, decoder.init_params(cfg, jax.random.PRNGKey(2)))
  src = gguf_ckpt.save_gguf(params, cfg, tmp_path / "src.gguf",
                           template=template(tmp_path / "t.gguf"))
  out, summary = tmp_path / "s.gguf", tmp_path / "s.json"
  _cli(f"--source={src}", "--layers=0,2", f"--out={out}", f"--summary={summary}",
       "--prompt=ab cab ba")
  s = json.loads(summary.read_text())
  assert (s["num_layers"], s["prompt_tokens"], s["config_changes"]) == (2, 7, {})
  assert s["same_tokenizer"] and s["max_abs_logit_diff"] <= 1e-5
  assert s["template"] == str(src)  # the source's own tokenizer by default


def test_load_student_from_a_run_dir_names_its_source(tmp_path):
  """A decoder run's best params (as the loop exports them) and its model source (the template)."""
  from research.checkpoints import store  # pylint: disable=g-import-not-at-top
  cfg = tiny(num_layers=2)
  params = jax.tree_util.tree_map(np.asarray, decoder.init_params(cfg, jax.random.PRNGKey(3)))
  run = tmp_path / "run"
  best = store.BestExport(run, "accuracy")
  best.update(5, {"accuracy": 0.5}, params,
              {"family": "llama", "config": dataclasses.asdict(cfg)})
  best.wait()
  best.close()
  (run / "fingerprint.json").write_text(json.dumps(
      {"config": {"model": {"source": "my-source.gguf"}}, "fingerprint": "x", "teachers": {}}))
  got, gcfg, origin = decoder_gguf.load_student(run_dir=str(run))
  assert gcfg.replace(rope_scaling=()) == cfg and origin == "my-source.gguf"  # JSON: () -> []
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, got)
