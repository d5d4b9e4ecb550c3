"""Smoke run: a tiny random 2-layer encoder on synthetic data; seconds on a CPU (tests use it).

Launch:
  python -m experiments.finetune --config configs/smoke.py --config.workdir=/tmp/smoke
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  """python -m experiments.finetune --config configs/smoke.py --config.workdir=/tmp/smoke"""
  c = common.base_config()
  c.name = "smoke"
  c.workdir = "runs/smoke"
  c.compile_cache_dir = ""        # tests write nothing outside their tmp dirs
  c.model.source = ""             # random init from the family's default config + overrides
  c.model.random_init = True
  c.model.overrides.num_layers = 2
  c.model.overrides.hidden_size = 32
  c.model.overrides.num_heads = 2
  c.model.overrides.intermediate_size = 64
  c.model.overrides.vocab_size = 128
  c.model.dtype = "float32"
  c.model.dropout = 0.1
  c.data.name = "synthetic"       # research.data.synthetic: 256/64/64 examples, 4 classes
  c.data.config = ""
  c.data.max_length = 16
  c.data.buckets = (16,)       # one bucket: one compiled step
  c.data.batch_size = 16
  c.data.eval_batch_size = 32
  c.optim.lr = 3e-3
  c.train.max_steps = 12
  c.train.eval_every = 6
  c.train.checkpoint_every = 4
  c.train.log_every = 1
  return c
