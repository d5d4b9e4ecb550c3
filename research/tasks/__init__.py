"""Tasks: name -> module with `num_outputs(config)` and `build(config, model_cfg) -> Task`.

A new task is one module here (see base.py for the protocol) plus one line in `TASKS`; a run
config picks it with `config.task`.
"""

from __future__ import annotations

import types

from research.tasks import causal_lm
from research.tasks import classification
from research.tasks.base import Distillation, Task

TASKS: dict[str, types.ModuleType] = {
    "classification": classification,
    "causal_lm": causal_lm,
}


def register(name: str, module: types.ModuleType) -> None:
  """Adds a task kind (a module with `num_outputs` and `build`), e.g. from a test file."""
  TASKS[name] = module


def get(name: str) -> types.ModuleType:
  if name not in TASKS:
    raise ValueError(f"config.task={name!r} is unknown; known tasks: {sorted(TASKS)}.")
  return TASKS[name]


__all__ = ["TASKS", "Distillation", "Task", "get", "register"]
