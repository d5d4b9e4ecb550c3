"""experiments/bench_decoder.py --peer writes its JSON and markdown on a tiny random decoder.

Times are a benchmark's and never asserted (only that they are positive). The PyTorch peer runs
when torch and transformers are installed, else it is skipped (--skip_peer).
"""

import importlib.util
import json

import jax

from experiments import bench_decoder
from research.models import decoder
from research.models import registry

# The peer needs torch (dev-only) and the shared peer script beside the checkout.
_TORCH = (importlib.util.find_spec("torch") is not None
          and importlib.util.find_spec("transformers") is not None
          and bench_decoder.PEER_SCRIPT.exists())


def test_even_layers_match_the_peer_script():
  assert bench_decoder.even_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
  assert bench_decoder.even_layers(4, 1) == [0]


def test_bench_decoder_peer_writes_expected_keys(tmp_path):
  cfg = decoder.DecoderConfig(vocab_size=400, hidden_size=32, num_layers=4, num_heads=4,
                              num_kv_heads=2, head_dim=8, intermediate_size=64,
                              max_position_embeddings=256)
  params = decoder.init_params(cfg, jax.random.PRNGKey(0))
  registry.save_hf(params, cfg, tmp_path / "tiny", family="llama")
  argv = ["--peer", f"--model_dir={tmp_path / 'tiny'}", "--layers=2", "--prompt_len=16",
          "--new_tokens=4", "--batch=2", "--train_batch=2", "--train_len=16", "--iters=2",
          "--rounds=2", f"--bw_bytes={1 << 20}", f"--out_dir={tmp_path / 'out'}"]
  if not _TORCH:
    argv.append("--skip_peer")
  bench_decoder.main(argv)
  res = json.loads((tmp_path / "out" / "peer_llm_f32_L2of4.json").read_text())
  keys = ("prefill_b1_tok_s", "decode_b1_tok_s", "decode_b2_tok_s", "train_tok_s")
  for k in keys:
    assert res["ours"][k] > 0, k
  for k in ("host_cpu", "loadavg_before", "loadavg_after", "versions", "command",
            "memory_bandwidth", "decode_b1_roofline", "ratios_ours_over_peer"):
    assert k in res, k
  assert res["shape"]["kept_layers"] == [0, 3] and res["ours"]["layers"] == 2
  if _TORCH:
    assert res["peer"]["layers"] == 2
    assert set(keys) <= set(res["peer"]) and set(keys) == set(res["ratios_ours_over_peer"])
  else:
    assert res["peer"] is None
  assert "| decode_b1_tok_s |" in (tmp_path / "out" / "peer_llm_f32_L2of4.md").read_text()
