"""Parameter layout of a model family: which '/'-joined param paths are layers, head, norms, biases.

Mask rules (research/masking.py) and student layer slicing read a `Layout`, never a family's path
names, so `last_k`, `bitfit`, `lora` and `head_only` are written once for every family.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import flax.traverse_util
import jax


@dataclasses.dataclass(frozen=True)
class Layout:
  """Regexes over '/'-joined param paths (re.search).

  Attributes:
    layer: a path inside transformer block i; group 1 is i (blocks are numbered 0..L-1).
    head: the task head (trained by head_only, last_k, bitfit and lora).
    norm: normalisation parameters (trained by bitfit).
    bias: bias vectors (trained by bitfit).
    embedding: token/position embeddings.
    layer_format: how block i's top-level path is spelled, e.g. "encoder/layer_{i}".
  """
  layer: str
  head: str
  norm: str
  bias: str = r"/bias$"
  embedding: str = r"embed"
  layer_format: str = "layer_{i}"

  def layer_index(self, path: str) -> int | None:
    m = re.search(self.layer, path)
    return int(m.group(1)) if m else None

  def is_head(self, path: str) -> bool:
    return re.search(self.head, path) is not None

  def is_norm(self, path: str) -> bool:
    return re.search(self.norm, path) is not None

  def is_bias(self, path: str) -> bool:
    return re.search(self.bias, path) is not None

  def num_layers(self, paths: Sequence[str]) -> int:
    ids = {i for p in paths if (i := self.layer_index(p)) is not None}
    if ids and ids != set(range(len(ids))):
      raise ValueError(f"layers are not numbered 0..L-1: {sorted(ids)}")
    return len(ids)


def flatten(params: Any) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(_as_dict(params), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(dict(flat), sep="/")


def _as_dict(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


def slice_layers(params: Any, layout: Layout, layers: Sequence[int]) -> dict:
  """Params keeping blocks `layers` (renumbered 0..) and every non-block param, all copied.

  Copies, so donating the student's buffers in a jitted step cannot invalidate a teacher's.
  """
  flat = flatten(params)
  prefix = {i: layout.layer_format.format(i=i) + "/" for i in range(max(layers, default=-1) + 1)}
  out = {}
  for path, x in flat.items():
    i = layout.layer_index(path)
    if i is None:
      out[path] = x
      continue
    for new, old in enumerate(layers):
      if i == old:
        out[prefix[new] + path[len(prefix[old]):]] = x
  return jax.tree.map(lambda x: x.copy(), unflatten(out))
