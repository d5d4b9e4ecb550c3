"""Helpers for tests that kill a running experiment and check what survives."""

import signal
import subprocess
import time
from typing import Callable


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], output: Callable[[], str], *,
                 timeout: float, what: str) -> None:
  """Waits until `ready()`, then SIGKILLs `proc` (a test failure if it dies or times out first)."""
  try:
    deadline = time.time() + timeout
    while not ready():
      assert proc.poll() is None, output()[-3000:]
      assert time.time() < deadline, f"{what} did not happen within {timeout} s"
      time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
