"""The run directory's guards: which settings trained it (fingerprints), who holds it (a lock),
and stopping on SIGINT/SIGTERM with a checkpoint."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
import threading
from typing import Any

import jax

from research import distill
from research.checkpoints import store as store_lib
from research.train import record as record_lib


FINGERPRINT_FILE = "fingerprint.json"
# What a run writes in its workdir (`clear_run` removes exactly these).
RUN_FILES = ("checkpoints", "best", "metrics.jsonl", "result.json", "config.json",
             "model.safetensors", FINGERPRINT_FILE, "corrupt_checkpoints")


def saved_config(workdir: str) -> dict | None:
  """The run config a workdir was trained with (fingerprint.json, else its checkpoints' metadata,
  else result.json), or None for an empty workdir."""
  fp = os.path.join(workdir, FINGERPRINT_FILE)
  if os.path.exists(fp):
    with open(fp) as f:
      return json.load(f)["config"]
  ckpt = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt)):
    saved = store_lib.read_metadata(ckpt).get("config")
    if saved is not None:
      return saved
  res = os.path.join(workdir, "result.json")
  if os.path.exists(res):
    with open(res) as f:
      return json.load(f).get("config")
  return None


def workdir_diff(config: Any, workdir: str | None = None) -> dict:
  """{dotted field: (saved, now)} where the run in `workdir` (default config.workdir) was trained
  with other result-changing settings than `config`; {} for a matching or empty workdir."""
  saved = saved_config(os.path.abspath(workdir or config.workdir))
  return {} if saved is None else record_lib.config_diff(saved, config)


def clear_run(workdir: str) -> None:
  """Removes a run's files from `workdir` (checkpoints, exports, records); other files stay."""
  for name in RUN_FILES:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def claim_workdir(config: Any, workdir: str, overwrite: bool) -> None:
  """Stops before any compute when `workdir` holds a run with other settings (unless
  `overwrite`); then records this run's fingerprint there."""
  diff = workdir_diff(config, workdir)
  teachers = _teacher_ids(config)
  diff.update(_teachers_diff(workdir, teachers))
  if diff and not overwrite:
    raise ValueError(
        f"{workdir} holds a run with other settings ({record_lib.describe_diff(diff)}); use a new "
        f"config.workdir, or pass --overwrite to discard that run and start over.")
  if diff:
    print(f"--overwrite: discarding the run in {workdir} ({record_lib.describe_diff(diff)})",
          file=sys.stderr, flush=True)
    clear_run(workdir)
  ckpt = os.path.join(workdir, "checkpoints")
  if not (os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))):
    # A fresh start: an export left by an earlier attempt must not compete with this run's.
    shutil.rmtree(os.path.join(workdir, "best"), ignore_errors=True)
  if jax.process_index() == 0:
    record_lib.write_json(os.path.join(workdir, FINGERPRINT_FILE),
                          {"fingerprint": record_lib.fingerprint(config),
                           "config": json.loads(config.to_json()), "teachers": teachers})


def _teacher_ids(config: Any) -> dict[str, str]:
  """{teacher dir: fingerprint of the run it holds ("" for none yet)} of a distillation run."""
  if not distill.is_distillation(config):
    return {}
  out = {}
  for d in distill.teacher_dirs(config):
    saved = saved_config(os.path.abspath(d))
    out[d] = record_lib.fingerprint(saved) if saved is not None else ""
  return out


def _teachers_diff(workdir: str, teachers: dict[str, str]) -> dict:
  """A student started against teachers that were retrained with other settings since."""
  fp = os.path.join(workdir, FINGERPRINT_FILE)
  if not os.path.exists(fp):
    return {}
  with open(fp) as f:
    old = json.load(f).get("teachers") or {}
  return {f"teacher {d} (retrained)": (old[d], now) for d, now in teachers.items()
          if old.get(d) and now and old[d] != now}


class WorkdirLock:
  """An exclusive lock on a workdir (`<workdir>/.lock`, holding the owner's pid).

  The OS drops it when its process dies, so a lock left by a killed run is simply taken over.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise RuntimeError(f"{os.path.dirname(self.path)} is in use by {holder}; wait for it to "
                         f"finish, stop it, or use another config.workdir.") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


class RunInterrupted(Exception):
  """SIGINT/SIGTERM stopped a run after saving a checkpoint at the current step."""


class StopSignals:
  """Within: SIGINT/SIGTERM set `signum` (the loop saves and stops); a second one aborts at once."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signum = None
    self._old = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:  # second signal: give up on a clean stop
      self.__exit__()
      raise KeyboardInterrupt
    self.signum = signum
    print(f"\n{signal.Signals(signum).name}: stopping after this step (saving a checkpoint); "
          "press again to abort without saving", file=sys.stderr, flush=True)

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}
