"""Parameter masks: which leaves of a params pytree train, and LoRA adapters.

A mask rule turns a params pytree into a label pytree of the same structure whose leaves are
"trainable" or "frozen" (the form `optax.multi_transform` takes). Rules read the family's `Layout`
(research/models/layout.py: which '/'-joined paths are blocks, head, norms, biases), so each rule is
written once for every family:

  full       every leaf.
  head_only  the classification head (a linear probe); also the pooler when pooling="pooler".
  last_k     the last k blocks + head; embeddings and the first L-k blocks are frozen.
  bitfit     every bias, every norm parameter, and the head (norm-only for bias-free families).
  lora       low-rank adapters under params["lora"] (see `add_lora`) + head; the base is frozen.
  regex      the leaves whose path matches a custom regular expression (re.search).

Frozen leaves get `optax.set_to_zero()` in `make_optimizer`, so they stay bit-identical and carry
no optimizer state (`optax.masked` alone would pass their raw gradients through).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from research.models import encoder
from research.models import layout as layout_lib
from research.models.layout import Layout

PyTree = Any
TRAINABLE = "trainable"
FROZEN = "frozen"
RULES = ("full", "head_only", "last_k", "bitfit", "lora", "regex")

def flatten(params: PyTree) -> dict[str, Any]:
  """Params pytree -> {'a/b/c': leaf}."""
  return layout_lib.flatten(params)

def unflatten(flat: Mapping[str, Any]) -> dict:
  return layout_lib.unflatten(flat)

def _as_dict(tree: PyTree) -> dict:
  # FrozenDict and other mappings -> plain nested dicts (the pytree contract).
  if isinstance(tree, Mapping):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree

def _layout(layout: Layout | None, pooling: str) -> Layout:
  # Default: the BERT family's layout (with the pooler in the head when pooling="pooler").
  return layout if layout is not None else encoder.layout(pooling)

def num_layers(params: PyTree, layout: Layout | None = None) -> int:
  """Number of transformer blocks in a params pytree."""
  return _layout(layout, "mean").num_layers(list(flatten(params)))

def trainable_paths(params: PyTree, rule: str, *, k: int = 2, regex: str = "",
                    pooling: str = "mean", layout: Layout | None = None) -> set[str]:
  """Paths of the leaves a rule trains.

  Args:
    params: params pytree (arrays or jax.ShapeDtypeStruct leaves); for rule="lora" it must already
      hold params["lora"] (see `add_lora`).
    rule: one of RULES.
    k: last_k: number of trained blocks, 0 <= k <= L.
    regex: regex rule: pattern searched in each '/'-joined path.
    pooling: BERT's pooling when `layout` is None ("pooler" puts the pooler in the head).
    layout: the family's parameter layout (research/models/layout.py); None: BERT's.

  Returns:
    The set of trainable paths.

  Raises:
    ValueError: unknown rule, bad k, or a rule that matches no parameter.
  """
  lay = _layout(layout, pooling)
  paths = list(flatten(params))
  if rule == "full":
    chosen = set(paths)
  elif rule == "head_only":
    chosen = {p for p in paths if lay.is_head(p)}
  elif rule == "last_k":
    n = lay.num_layers(paths)
    if not 0 <= k <= n:
      raise ValueError(f"mask.k={k} but the model has {n} layers; set --config.mask.k to a value "
                       f"in 0..{n}.")
    def in_last_k(p):
      i = lay.layer_index(p)
      return i is not None and i >= n - k
    chosen = {p for p in paths if lay.is_head(p) or in_last_k(p)}
  elif rule == "bitfit":
    chosen = {p for p in paths if lay.is_head(p) or lay.is_bias(p) or lay.is_norm(p)}
  elif rule == "lora":
    if not any(p.startswith("lora/") for p in paths):
      raise ValueError("mask.rule='lora' but params hold no params['lora']; call "
                       "masking.add_lora(params, ...) first.")
    chosen = {p for p in paths if p.startswith("lora/") and not p.endswith("/scale")
              or lay.is_head(p)}
  elif rule == "regex":
    chosen = _regex_paths(paths, regex)
  else:
    raise ValueError(f"mask.rule={rule!r} is unknown; use one of {RULES}.")
  if not chosen:
    hint = f" (regex={regex!r})" if rule == "regex" else ""
    raise ValueError(f"mask rule {rule!r}{hint} matches no parameter; parameter paths look like "
                     f"{paths[:3]}.")
  return chosen

def _regex_paths(paths: list[str], regex: str) -> set[str]:
  if not regex:
    raise ValueError("mask.rule='regex' needs a pattern: set --config.mask.regex='...'.")
  try:
    pattern = re.compile(regex)
  except re.error as e:
    raise ValueError(f"mask.regex={regex!r} is not a valid regular expression: {e}") from None
  return {p for p in paths if pattern.search(p)}

def make_labels(params: PyTree, rule: str, **kw) -> PyTree:
  """Label pytree ("trainable"/"frozen" leaves) for `params`; kw as in `trainable_paths`."""
  chosen = trainable_paths(params, rule, **kw)
  return unflatten({p: TRAINABLE if p in chosen else FROZEN for p in flatten(params)})

def labels_from_config(params: PyTree, mask_cfg: Any, *, pooling: str = "mean",
                       layout: Layout | None = None) -> PyTree:
  """`make_labels` driven by a config's `mask` section (rule, k, regex)."""
  return make_labels(params, mask_cfg.rule, k=mask_cfg.k, regex=mask_cfg.regex, pooling=pooling,
                     layout=layout)

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

def prepare(params: PyTree, mask_cfg: Any, rng: jax.Array, *, pooling: str = "mean",
            layout: Layout | None = None) -> tuple[dict, PyTree]:
  """Adds adapters when mask_cfg.rule == "lora", then builds labels. Returns (params, labels)."""
  params = _as_dict(params)
  if mask_cfg.rule == "lora":
    params = add_lora(params, mask_cfg.lora_rank, mask_cfg.lora_alpha, mask_cfg.lora_targets, rng)
  return params, labels_from_config(params, mask_cfg, pooling=pooling, layout=layout)

def validate(params: PyTree, mask_cfg: Any, *, pooling: str = "mean",
             layout: Layout | None = None) -> dict[str, int]:
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
  return count(params, labels_from_config(params, mask_cfg, pooling=pooling, layout=layout))


# Training-only params (research/losses.py init_projections) that the model itself never reads.
TRAINING_ONLY = ("kd_proj",)


def model_params(params: PyTree) -> dict:
  """The params the model itself uses: LoRA folded in, training-only extras off."""
  return {k: v for k, v in merge_lora(params).items() if k not in TRAINING_ONLY}
