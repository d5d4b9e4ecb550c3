"""Helpers for tests that kill a running experiment and check what survives."""

import signal
import subprocess
import textwrap
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


def killed_run_script(hang_at_step: int) -> str:
  """`python -c` script: a smoke run into argv[1], then the same config into argv[2] hanging
  (marker file argv[3] written) after train step `hang_at_step`, for `sigkill_when` to kill."""
  return textwrap.dedent(f"""
      import sys, time
      import jax
      from configs import smoke
      from research import train
      from research.train import step as step_lib

      ref_dir, workdir, marker = sys.argv[1:]
      config = smoke.get_config()
      config.workdir = ref_dir
      train.run(config)

      make = step_lib.make_train_step
      def make_hanging(*args, **kw):
        step = make(*args, **kw)
        calls = [0]
        def hanging(state, batch, aux=None):
          out = step(state, batch, aux)
          calls[0] += 1
          if calls[0] == {hang_at_step}:
            jax.block_until_ready(out)
            open(marker, "w").close()
            time.sleep(600)
          return out
        return hanging
      step_lib.make_train_step = make_hanging
      config = smoke.get_config()
      config.workdir = workdir
      train.run(config)
  """)
