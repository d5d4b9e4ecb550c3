"""Parameter masks: which leaves of a params pytree train, and LoRA adapters.

A mask rule turns a params pytree into a label pytree of the same structure whose leaves are
"trainable" or "frozen" (the form `optax.multi_transform` takes). Rules match '/'-joined paths
(`encoder/layer_3/attn/query/kernel`, see docs/ARCHITECTURE.md):

  full       every leaf.
  head_only  the classification head (a linear probe); also the pooler when pooling="pooler".
  last_k     the last k encoder layers + head; embeddings and the first L-k layers are frozen.
  bitfit     every bias, every LayerNorm scale, and the head.
  lora       low-rank adapters under params["lora"] (see `add_lora`) + head; the base is frozen.
  regex      the leaves whose path matches a custom regular expression (re.search).

Frozen leaves get `optax.set_to_zero()` in `make_optimizer`, so they stay bit-identical and carry
no optimizer state (`optax.masked` alone would pass their raw gradients through).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
TRAINABLE = "trainable"
FROZEN = "frozen"
RULES = ("full", "head_only", "last_k", "bitfit", "lora", "regex")

_LAYER_RE = re.compile(r"^encoder/layer_(\d+)/")
_LN_RE = re.compile(r"(^|/)[^/]*ln/(scale|bias)$")

def flatten(params: PyTree) -> dict[str, Any]:
  """Params pytree -> {'a/b/c': leaf}."""
  return flax.traverse_util.flatten_dict(_as_dict(params), sep="/")

def unflatten(flat: Mapping[str, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(dict(flat), sep="/")

def _as_dict(tree: PyTree) -> dict:
  # FrozenDict and other mappings -> plain nested dicts (the pytree contract).
  if isinstance(tree, Mapping):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree

def num_layers(params: PyTree) -> int:
  """Number of `encoder/layer_{i}` blocks in a params pytree."""
  ids = {int(m.group(1)) for p in flatten(params) if (m := _LAYER_RE.match(p))}
  if ids and ids != set(range(len(ids))):
    raise ValueError(f"encoder layers are not numbered 0..L-1: {sorted(ids)}")
  return len(ids)

def _head_re(pooling: str) -> re.Pattern:
  return re.compile(r"^(head|encoder/pooler)/" if pooling == "pooler" else r"^head/")

def trainable_paths(params: PyTree, rule: str, *, k: int = 2, regex: str = "",
                    pooling: str = "mean") -> set[str]:
  """Paths of the leaves a rule trains.

  Args:
    params: params pytree (arrays or jax.ShapeDtypeStruct leaves); for rule="lora" it must already
      hold params["lora"] (see `add_lora`).
    rule: one of RULES.
    k: last_k: number of trained encoder layers, 0 <= k <= L.
    regex: regex rule: pattern searched in each '/'-joined path.
    pooling: the model's pooling; with "pooler" the pooler dense counts as part of the head.

  Returns:
    The set of trainable paths.

  Raises:
    ValueError: unknown rule, bad k, or a rule that matches no parameter.
  """
  paths = list(flatten(params))
  head = _head_re(pooling)
  if rule == "full":
    chosen = set(paths)
  elif rule == "head_only":
    chosen = {p for p in paths if head.match(p)}
  elif rule == "last_k":
    n = num_layers(params)
    if not 0 <= k <= n:
      raise ValueError(f"mask.k={k} but the encoder has {n} layers; set --config.mask.k to a value "
                       f"in 0..{n}.")
    def in_last_k(p):
      m = _LAYER_RE.match(p)
      return m is not None and int(m.group(1)) >= n - k
    chosen = {p for p in paths if head.match(p) or in_last_k(p)}
  elif rule == "bitfit":
    chosen = {p for p in paths if head.match(p) or p.endswith("/bias") or _LN_RE.search(p)}
  elif rule == "lora":
    if not any(p.startswith("lora/") for p in paths):
      raise ValueError("mask.rule='lora' but params hold no params['lora']; call "
                       "masking.add_lora(params, ...) first.")
    chosen = {p for p in paths if p.startswith("lora/") and not p.endswith("/scale")
              or head.match(p)}
  elif rule == "regex":
    if not regex:
      raise ValueError("mask.rule='regex' needs a pattern: set --config.mask.regex='...'.")
    try:
      pattern = re.compile(regex)
    except re.error as e:
      raise ValueError(f"mask.regex={regex!r} is not a valid regular expression: {e}") from None
    chosen = {p for p in paths if pattern.search(p)}
  else:
    raise ValueError(f"mask.rule={rule!r} is unknown; use one of {RULES}.")
  if not chosen:
    hint = f" (regex={regex!r})" if rule == "regex" else ""
    raise ValueError(f"mask rule {rule!r}{hint} matches no parameter; parameter paths look like "
                     f"{paths[:3]}.")
  return chosen

def make_labels(params: PyTree, rule: str, **kw) -> PyTree:
  """Label pytree ("trainable"/"frozen" leaves) for `params`; kw as in `trainable_paths`."""
  chosen = trainable_paths(params, rule, **kw)
  return unflatten({p: TRAINABLE if p in chosen else FROZEN for p in flatten(params)})

def labels_from_config(params: PyTree, mask_cfg: Any, *, pooling: str = "mean") -> PyTree:
  """`make_labels` driven by a config's `mask` section (rule, k, regex)."""
  return make_labels(params, mask_cfg.rule, k=mask_cfg.k, regex=mask_cfg.regex, pooling=pooling)

def split(tree: PyTree, labels: PyTree) -> tuple[PyTree, PyTree]:
  """(trainable, frozen): two copies of `tree` with the other kind of leaves set to None."""
  pick = lambda want: jax.tree.map(lambda x, l: x if l == want else None, tree, labels)
  return pick(TRAINABLE), pick(FROZEN)

def combine(trainable: PyTree, frozen: PyTree) -> PyTree:
  """Inverse of `split`."""
  return jax.tree.map(lambda a, b: b if a is None else a, trainable, frozen,
                      is_leaf=lambda x: x is None)

def count(params: PyTree, labels: PyTree | None = None) -> dict[str, int]:
  """Total and trainable parameter counts and bytes.

  Args:
    params: params pytree (arrays or ShapeDtypeStruct leaves).
    labels: label pytree from `make_labels`; None counts every leaf as trainable.

  Returns:
    {"params_total", "params_trainable", "bytes_total", "bytes_trainable"}.
  """
  flat = flatten(params)
  flat_labels = flatten(labels) if labels is not None else {p: TRAINABLE for p in flat}
  out = dict(params_total=0, params_trainable=0, bytes_total=0, bytes_trainable=0)
  for path, leaf in flat.items():
    n = int(np.prod(leaf.shape))
    b = n * np.dtype(leaf.dtype).itemsize
    out["params_total"] += n
    out["bytes_total"] += b
    if flat_labels[path] == TRAINABLE:
      out["params_trainable"] += n
      out["bytes_trainable"] += b
  return out

# ---------------------------------------------------------------------------------------------
# LoRA: params["lora"]["encoder.layer_0.attn.query"] = {"a": in×r, "b": r×out, "scale": alpha/r}.
# merged kernel = kernel + scale * a @ b; b starts at zero so the merged model starts unchanged.

def add_lora(params: PyTree, rank: int, alpha: float, targets_regex: str,
             rng: jax.Array) -> dict:
  """Adds LoRA adapters for every 2-D `kernel` whose path matches `targets_regex`.

  Args:
    params: params pytree without params["lora"].
    rank: adapter rank r >= 1.
    alpha: LoRA alpha; the update is scaled by alpha / r.
    targets_regex: searched in the kernel's module path, e.g. r"attn/(query|value)".
    rng: PRNG key for the `a` factors (uniform in ±1/sqrt(in), as PEFT's kaiming init).

  Returns:
    A new params dict with params["lora"] added (base leaves shared, not copied).
  """
  params = _as_dict(params)
  if "lora" in params:
    raise ValueError("params already hold params['lora']; add_lora was applied twice.")
  if rank < 1:
    raise ValueError(f"mask.lora_rank={rank}; use a rank >= 1.")
  pattern = re.compile(targets_regex)
  targets = [p[:-len("/kernel")] for p, x in flatten(params).items()
             if p.endswith("/kernel") and len(x.shape) == 2 and pattern.search(p[:-len("/kernel")])]
  if not targets:
    raise ValueError(f"mask.lora_targets={targets_regex!r} matches no 2-D kernel; module paths "
                     f"look like 'encoder/layer_0/attn/query'.")
  flat = flatten(params)
  lora = {}
  for i, module in enumerate(sorted(targets)):
    d_in, d_out = flat[module + "/kernel"].shape
    if rank > min(d_in, d_out):
      raise ValueError(f"mask.lora_rank={rank} exceeds the kernel shape {(d_in, d_out)} of "
                       f"{module}.")
    bound = 1.0 / math.sqrt(d_in)
    lora[module.replace("/", ".")] = {
        "a": jax.random.uniform(jax.random.fold_in(rng, i), (d_in, rank), jnp.float32,
                                -bound, bound),
        "b": jnp.zeros((rank, d_out), jnp.float32),
        "scale": jnp.asarray(alpha / rank, jnp.float32),
    }
  return {**params, "lora": lora}

def merge_lora(params: PyTree) -> dict:
  """Folds params["lora"] into the base kernels; returns params without "lora" (jit-safe).

  Params without adapters are returned unchanged.
  """
  params = _as_dict(params)
  if "lora" not in params:
    return params
  flat = flatten({k: v for k, v in params.items() if k != "lora"})
  for module, ad in params["lora"].items():
    key = module.replace(".", "/") + "/kernel"
    if key not in flat:
      raise ValueError(f"LoRA adapter {module!r} has no base kernel {key!r}.")
    kernel = flat[key]
    delta = ad["scale"] * (ad["a"].astype(jnp.float32) @ ad["b"].astype(jnp.float32))
    flat[key] = (kernel + delta).astype(kernel.dtype)
  return unflatten(flat)

def prepare(params: PyTree, mask_cfg: Any, rng: jax.Array, *,
            pooling: str = "mean") -> tuple[dict, PyTree]:
  """Adds adapters when mask_cfg.rule == "lora", then builds labels. Returns (params, labels)."""
  params = _as_dict(params)
  if mask_cfg.rule == "lora":
    params = add_lora(params, mask_cfg.lora_rank, mask_cfg.lora_alpha, mask_cfg.lora_targets, rng)
  return params, labels_from_config(params, mask_cfg, pooling=pooling)

def validate(params: PyTree, mask_cfg: Any, *, pooling: str = "mean") -> dict[str, int]:
  """Checks a mask config against (abstract) params without computing anything.

  Args:
    params: params pytree, typically jax.ShapeDtypeStruct leaves from `jax.eval_shape`.
    mask_cfg: config `mask` section.
    pooling: the model's pooling.

  Returns:
    `count` of the masked params (with adapters for rule="lora").

  Raises:
    ValueError: as `trainable_paths` / `add_lora`.
  """
  if mask_cfg.rule == "lora":
    params = jax.eval_shape(
        lambda p: add_lora(p, mask_cfg.lora_rank, mask_cfg.lora_alpha, mask_cfg.lora_targets,
                           jax.random.PRNGKey(0)), _as_dict(params))
  return count(params, labels_from_config(params, mask_cfg, pooling=pooling))
