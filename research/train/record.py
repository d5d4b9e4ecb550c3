"""The run's written traces: metrics.jsonl, the result record, the code version, the fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any, Mapping

import jax


def git_sha() -> str:
  """The commit this code runs at ("-dirty" when tracked code has changes), "unknown" outside git."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True, timeout=10).stdout.strip()
    # Only code makes a run "-dirty"; results/ changes while a grid runs (its tables are rewritten).
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no",
                            "--", "research", "configs", "experiments", "pyproject.toml"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return sha + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def write_json(path: str | os.PathLike, obj: Any, default: Any = float) -> None:
  """Atomic JSON write: a kill never leaves a half-written file behind."""
  path = os.fspath(path)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True, default=default)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


# ----------------------------------------------------------------------------- run fingerprints

# Run-config fields that cannot change a run's result: names, paths, logging and checkpoint
# cadence (a resumed run is bit-identical to an uninterrupted one), table labels. A trailing ".*"
# covers a whole section.
NON_RESULT_FIELDS = ("name", "workdir", "compile_cache_dir", "overwrite", "tags.*",
                     "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "data.manual_dir", "data.data_dir", "distill.train_missing_teacher")
# Mapping-valued fields that are one value: compared whole (a loss added to distill.losses is a
# change), and replaced whole by a grid method's overrides.
MAPPING_FIELDS = ("distill.losses",)


def _to_plain(config: Any) -> dict:
  if hasattr(config, "to_json"):
    return json.loads(config.to_json())
  return json.loads(json.dumps(dict(config), default=str))  # tuples -> lists, as stored


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested config dict -> {"a.b.c": value}; MAPPING_FIELDS stay whole values."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and key not in MAPPING_FIELDS:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _ignored(key: str, extra: tuple[str, ...] = ()) -> bool:
  for f in NON_RESULT_FIELDS + tuple(extra):
    if key == f or (f.endswith(".*") and key.startswith(f[:-1])):
      return True
  return False


def result_fields(config: Any, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
  """The dotted run-config fields that change a run's result (JSON values), e.g. "optim.lr"."""
  return {k: v for k, v in sorted(flatten(_to_plain(config)).items()) if not _ignored(k, ignore)}


def fingerprint(config: Any) -> str:
  """A stable hash of `result_fields(config)`: equal fingerprints, same run."""
  blob = json.dumps(result_fields(config), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_diff(old: Any, new: Any, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
  """Result fields whose value differs: {dotted name: (old, new)}.

  Fields present on one side only (added to the base config, or dropped from it, since `old` was
  written) are not a difference: a new field's default keeps the old behaviour.
  """
  a, b = result_fields(old, ignore), result_fields(new, ignore)
  return {k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]}


def describe_diff(diff: Mapping[str, tuple[Any, Any]], limit: int = 6) -> str:
  """"optim.lr 0.003 → 0.001, seed 0 → 1" (the first `limit` fields, then "+N more")."""
  items = [f"{k} {_short(o)} → {_short(n)}" for k, (o, n) in list(diff.items())[:limit]]
  if len(diff) > limit:
    items.append(f"+{len(diff) - limit} more")
  return ", ".join(items)


def _short(v: Any) -> str:
  s = json.dumps(v, sort_keys=True, separators=(",", ":"))
  return s if len(s) <= 40 else s[:37] + "..."


class MetricsLog:
  """metrics.jsonl of a run (process 0 writes); on resume drops records past the resumed step."""

  def __init__(self, path: str, resume_step: int):
    self.path = path
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    kept = []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          line = line.strip()
          if line:
            try:
              rec = json.loads(line)
            except ValueError:  # a torn last line after a kill
              continue
            if rec.get("step", 0) <= resume_step and rec.get("split") != "test":
              kept.append(line)
    with open(path, "w") as f:
      f.writelines(l + "\n" for l in kept)

  def write(self, record: Mapping[str, Any]) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record, sort_keys=True, default=float) + "\n")


def scalars(metrics: Mapping[str, Any]) -> dict:
  """A metrics dict without its per-class report (for metrics.jsonl lines)."""
  return {k: v for k, v in metrics.items() if k != "per_class"}
