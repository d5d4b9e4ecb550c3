"""A decoder teacher's top-k next-token log-probs at the answer positions, cached once to disk.

Token-level KD (research/token_losses.py) against a frozen teacher needs only the teacher's
distribution at the answer tokens of each training row. Running the teacher once over the train
rows and keeping its top-k (+ one tail bin) makes every student and seed that reuses the cache cost
the same as training on labels. The cache lives in the teacher's run directory, named by a hash of
what it depends on (the rows' token ids and answer masks, k, T, the teacher's params), so a change
to any of them makes a new file instead of silently reusing an old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from research import token_losses


@dataclasses.dataclass(frozen=True)
class TeacherTopK:
  """A teacher's top-k next-token log-probs (+ tail bin) at every train row's answer positions."""
  ids_NxAxK: np.ndarray        # int32
  logprobs_NxAxK1: np.ndarray  # float32, at the cache's temperature
  meta: dict

  def lookup(self, index_B: np.ndarray) -> dict:
    rows = np.clip(np.asarray(index_B), 0, len(self.ids_NxAxK) - 1)  # padding rows: index -1
    return {"teacher_topk_ids": self.ids_NxAxK[rows],
            "teacher_topk_logprobs": self.logprobs_NxAxK1[rows]}


def answer_positions(batch: Mapping[str, Any], max_answer: int) -> dict:
  """The answer tokens of each row, gathered: B×A positions whose logits predict them.

  Token t is predicted by the logits at t - 1, so the positions are those where loss_mask[:, 1:]
  is 1 (first `max_answer` of them; rows with fewer are padded with position 0, mask 0).
  """
  m_BxL1 = batch["loss_mask"][:, 1:]
  pos = jax.vmap(lambda r: jnp.nonzero(r, size=max_answer, fill_value=0)[0])(m_BxL1)
  mask = jnp.take_along_axis(m_BxL1, pos, 1).astype(jnp.float32)
  target = jnp.take_along_axis(batch["input_ids"][:, 1:], pos, 1)
  return {"logit_positions": pos.astype(jnp.int32), "answer_mask": mask * batch["valid"][:, None],
          "answer_ids": target}


CACHE_VERSION = 2  # bump when what a cache holds, or how it is made, changes


def _params_digest(params: Any) -> str:
  """sha256 over every leaf's shape and bytes (a retrained teacher in the same dir differs)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def cache_key(task: Any, params: Any, teacher_cfg: Any, *, k: int, temperature: float) -> dict:
  """Everything the cached log-probs depend on: rows, k, T, the teacher's config and params."""
  rows = task.splits["train"]
  h = hashlib.sha256()
  for a in (rows.input_ids, rows.token_type_ids, rows.lengths):
    h.update(np.ascontiguousarray(a).tobytes())
  cfg = dataclasses.asdict(teacher_cfg) if dataclasses.is_dataclass(teacher_cfg) else teacher_cfg
  return {"rows": h.hexdigest()[:16], "n_rows": int(len(rows)), "top_k": int(k),
          "temperature": float(temperature), "max_answer": int(task.max_answer),
          "teacher_params": _params_digest(params), "teacher_config": json.loads(json.dumps(cfg)),
          "version": CACHE_VERSION}


def cache_path(teacher_dir: str, key: dict) -> pathlib.Path:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return pathlib.Path(teacher_dir) / "topk_cache" / f"{digest}.npz"


def build(task: Any, teacher_apply: Any, params: Any, *, k: int, temperature: float,
          batch_size: int, forward_flops: Any = None) -> tuple[np.ndarray, np.ndarray, float]:
  """Runs the teacher over every train row once: (ids N×A×k, log-probs N×A×(k+1), FLOPs).

  Every process builds the whole cache (train batches of any process may hold any row); rows
  left unfilled would read as junk, so the build checks that none is.
  """
  max_answer = task.max_answer

  @jax.jit
  def topk(p, batch):
    batch = {**batch, **answer_positions(batch, max_answer)}
    logits = teacher_apply(p, batch, deterministic=True)["logits"]
    return token_losses.teacher_topk(teacher_logits_BxAxV=logits, k=k, temperature=temperature)

  n = len(task.splits["train"])
  ids = np.full((n, max_answer, k), -1, np.int32)
  logp = np.zeros((n, max_answer, k + 1), np.float32)
  filled, flops = np.zeros(n, bool), 0.0
  for batch in task.eval_batches("train", batch_size, all_rows=True):
    i, lp = (np.asarray(x) for x in topk(params, batch))
    keep = np.asarray(batch["valid"]) > 0
    ids[batch["index"][keep]], logp[batch["index"][keep]] = i[keep], lp[keep]
    filled[batch["index"][keep]] = True
    if forward_flops is not None:
      flops += forward_flops(len(batch["valid"]), batch["input_ids"].shape[1])
  if not filled.all():
    raise RuntimeError(f"teacher top-k cache: {int((~filled).sum())} of {n} train rows were not "
                       "computed; nothing was saved.")
  return ids, logp, flops


def load_or_build(task: Any, teacher_dir: str, teacher_apply: Any, params: Any, teacher_cfg: Any,
                  *, k: int, temperature: float, batch_size: int,
                  forward_flops: Any = None) -> TeacherTopK:
  """The cache for this task's train rows and this teacher; built (and saved) when missing.

  meta["build_flops"] is the teacher's analytic forward FLOPs of the build (paid once, by the run
  that built it: meta["reused"] is False there).
  """
  key = cache_key(task, params, teacher_cfg, k=k, temperature=temperature)
  path = cache_path(teacher_dir, key)
  if path.is_file():
    with np.load(path) as f:
      meta = json.loads(str(f["meta"]))
      if meta.get("key") != key:
        raise ValueError(f"teacher top-k cache {str(path)!r} was made for {meta.get('key')}, not "
                         f"{key}; delete it to rebuild.")
      return TeacherTopK(f["ids"], f["logprobs"], dict(meta, reused=True, path=str(path)))
  ids, logp, flops = build(task, teacher_apply, params, k=k, temperature=temperature,
                           batch_size=batch_size, forward_flops=forward_flops)
  mass = np.exp(logp[..., :-1]).sum(-1)
  answer_len = task.splits["train"].token_type_ids.sum(1)
  mask = np.arange(ids.shape[1])[None, :] < answer_len[:, None]  # the real answer slots
  meta = {"key": key, "teacher_dir": str(teacher_dir), "build_flops": flops,
          "mean_topk_mass": float(mass[mask].mean()) if mask.any() else 0.0}
  if jax.process_index() == 0:  # every process built the same arrays; one writes them
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, ids=ids, logprobs=logp, meta=json.dumps(meta, sort_keys=True))
    os.replace(tmp, path)  # atomic: a killed build leaves no half cache behind
  return TeacherTopK(ids, logp, dict(meta, reused=False, path=str(path)))
