"""Deterministic, stratified partitions of examples (dataset splits and label fractions).

Order within a class comes from SHA-256 of `"{seed}:{key}"`, not from a library RNG, so a partition
depends only on the example keys, their classes and the seed: it is identical on every machine and
with every numpy version.
"""

from collections.abc import Hashable, Sequence

import hashlib

import numpy as np


def hash_rank(keys: Sequence[str], seed: int | str) -> np.ndarray:
  """Positions of `keys` sorted by a seeded hash.

  Args:
    keys: N distinct strings (example ids).
    seed: the ordering seed (an int, or a string such as "seed/epoch").

  Returns:
    int64 array (N,): a permutation of range(N).
  """
  digests = [hashlib.sha256(f"{seed}:{k}".encode()).digest() for k in keys]
  return np.array(sorted(range(len(keys)), key=digests.__getitem__), dtype=np.int64)


def stratified_partition(keys: Sequence[str], strata: Sequence[Hashable],
                         fractions: Sequence[float], seed: int,
                         groups: Sequence[Hashable] | None = None) -> list[np.ndarray]:
  """Splits examples into parts with the same class mix, deterministically.

  Part i >= 1 gets round(fractions[i] * U) of the U units (groups) in all, shared over strata by
  largest remainder; part 0 gets the rest of every stratum, so a class of one stays in part 0.

  Args:
    keys: N distinct example ids (they seed the order).
    strata: N class keys to stratify by.
    fractions: K fractions summing to 1.
    seed: the ordering seed.
    groups: optional N group keys; examples that share one (e.g. duplicate texts) go to the same
      part, with the stratum of the group's first example.

  Returns:
    K sorted int64 arrays of positions in range(N); together they cover range(N) exactly once.
  """
  if len(keys) != len(strata) or (groups is not None and len(groups) != len(keys)):
    raise ValueError(f"keys/strata/groups lengths differ: {len(keys)}, {len(strata)}, "
                     f"{None if groups is None else len(groups)}")
  if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
    raise ValueError(f"fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
  groups = list(keys) if groups is None else list(groups)
  members: dict[Hashable, list[int]] = {}
  for i, g in enumerate(groups):
    members.setdefault(g, []).append(i)
  by_stratum: dict[Hashable, list[Hashable]] = {}
  for g, idx in members.items():
    by_stratum.setdefault(strata[idx[0]], []).append(g)
  strata_keys = list(by_stratum)
  sizes = _allocate([len(by_stratum[s]) for s in strata_keys], fractions)
  parts: list[list[int]] = [[] for _ in fractions]
  for s, stratum_sizes in zip(strata_keys, sizes):
    stratum_groups = by_stratum[s]
    order = hash_rank([keys[members[g][0]] for g in stratum_groups], seed)
    start = 0
    for part, size in zip(parts, stratum_sizes):
      for j in order[start:start + size]:
        part.extend(members[stratum_groups[j]])
      start += size
  return [np.array(sorted(p), dtype=np.int64) for p in parts]


def _allocate(counts: Sequence[int], fractions: Sequence[float]) -> list[list[int]]:
  """Per-stratum part sizes: parts >= 1 hit their overall rounded totals by largest remainder.

  Args:
    counts: S stratum sizes.
    fractions: K part fractions.

  Returns:
    S lists of K sizes; each sums to its stratum's count.
  """
  sizes = [[0] * len(fractions) for _ in counts]
  free = list(counts)
  for i, f in enumerate(fractions[1:], start=1):
    quotas = [f * n for n in counts]
    for s, q in enumerate(quotas):
      sizes[s][i] = min(int(q), free[s])
      free[s] -= sizes[s][i]
    short = int(round(f * sum(counts))) - sum(row[i] for row in sizes)
    # Largest fractional remainder first; ties go to the earlier stratum (first appearance).
    for s in sorted(range(len(counts)), key=lambda s: (-(quotas[s] - int(quotas[s])), s)):
      if short <= 0:
        break
      if free[s] > 1:  # keep at least one unit of every stratum in part 0
        sizes[s][i] += 1
        free[s] -= 1
        short -= 1
  for s, row in enumerate(sizes):
    row[0] = free[s]
  return sizes
