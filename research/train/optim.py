"""Optimizer and learning-rate schedule: AdamW on the trainable leaves, nothing on frozen ones."""

from __future__ import annotations

from typing import Any

import jax
import optax

from research import masking

PyTree = Any
SCHEDULES = ("linear", "cosine", "constant")


def make_schedule(optim_cfg: Any, total_steps: int) -> optax.Schedule:
  """Linear warmup (warmup_ratio of total_steps) then linear/cosine decay to 0, or constant."""
  if optim_cfg.schedule not in SCHEDULES:
    raise ValueError(f"optim.schedule={optim_cfg.schedule!r}; use one of {SCHEDULES}.")
  lr = float(optim_cfg.lr)
  warmup = int(round(optim_cfg.warmup_ratio * total_steps))
  decay = max(total_steps - warmup, 1)
  warm = optax.linear_schedule(0.0, lr, max(warmup, 1))
  if optim_cfg.schedule == "linear":
    after = optax.linear_schedule(lr, 0.0, decay)
  elif optim_cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, decay)
  else:
    after = optax.constant_schedule(lr)
  if warmup == 0:
    return after
  return optax.join_schedules([warm, after], [warmup])


def make_optimizer(optim_cfg: Any, labels: PyTree,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (+ global-norm clipping) on trainable leaves, `set_to_zero` on frozen ones.

  Weight decay skips vectors (biases, LayerNorm). Frozen leaves carry no optimizer state.

  Returns:
    (tx, learning-rate schedule).
  """
  schedule = make_schedule(optim_cfg, total_steps)
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                           weight_decay=optim_cfg.weight_decay,
                           mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  tx = optax.multi_transform(
      {masking.TRAINABLE: optax.chain(*parts), masking.FROZEN: optax.set_to_zero()}, labels)
  return tx, schedule
