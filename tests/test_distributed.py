"""Multi-process training on JAX's own engine: two `jax.distributed` processes on localhost (one CPU
device each, gloo collectives) train the smoke run through the one loop with the same per-step
losses and final params as one process with two host devices."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

from research import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4

# argv: workdir. The multi-process job is described by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
# JAX_PROCESS_ID, which train.run hands to jax.distributed.initialize (research/train/parallel.py).
WORKER = textwrap.dedent(f"""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from configs import smoke
    from research import train

    config = smoke.get_config()
    config.workdir = sys.argv[1]
    config.train.max_steps = config.train.eval_every = config.train.checkpoint_every = {STEPS}
    record = train.run(config)
    print("DONE", jax.process_index(), jax.process_count(), jax.device_count(),
          jax.local_device_count(), record["metrics"]["test"]["accuracy"], flush=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_backend_optimization_level=0")
  env.update(extra)
  return env


def _train_losses(workdir: pathlib.Path) -> list[float]:
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  return [l["loss"] for l in lines if l["split"] == "train"]


def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-c", WORKER, str(tmp_path / "two_procs")], cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))) for i in range(2)]
  # The reference runs meanwhile: one process, two host devices, the same global batch.
  ref = subprocess.run(
      [sys.executable, "-c", WORKER, str(tmp_path / "one_proc")], cwd=ROOT, capture_output=True,
      text=True, timeout=240,
      env=_env(XLA_FLAGS="--xla_backend_optimization_level=0 "
               "--xla_force_host_platform_device_count=2"))
  try:
    outs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:  # one dead process leaves the other waiting on the coordinator
      if p.poll() is None:
        p.kill()
        p.communicate()
  assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-4000:]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  done = [next(l for l in out.splitlines() if l.startswith("DONE")).split() for out in outs]
  # Each process saw the 2-process job (2 global devices, 1 its own) and the same test metrics.
  assert sorted(d[1:5] for d in done) == [["0", "2", "2", "1"], ["1", "2", "2", "1"]], done
  assert done[0][5] == done[1][5]
  ref_done = next(l for l in ref.stdout.splitlines() if l.startswith("DONE")).split()
  assert ref_done[1:5] == ["0", "1", "2", "2"]

  two, one = _train_losses(tmp_path / "two_procs"), _train_losses(tmp_path / "one_proc")
  assert len(one) == STEPS and np.isfinite(one).all()
  np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
  two_params = train.load_run_params(str(tmp_path / "two_procs"))[0]
  one_params = train.load_run_params(str(tmp_path / "one_proc"))[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), two_params,
               one_params)
