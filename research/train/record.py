"""The run's written traces: metrics.jsonl, the result record, the code version."""

from __future__ import annotations

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


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write: a kill never leaves a half-written file behind."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True, default=float)
  os.replace(tmp, path)


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
