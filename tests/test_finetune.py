"""The fine-tuning run on the smoke config: outputs, SIGKILL + resume, NaN stop, config errors."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import smoke
from research import train
from tests.processes import killed_run_script, sigkill_when

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the smoke config uninterrupted in `ref_dir`, then again in `workdir` but hanging after the
# 6th train step (checkpoint at step 4, next at 8) so the test can SIGKILL it mid-interval.
KILLED_RUN = killed_run_script(6)


def _config(workdir, **overrides):
  c = smoke.get_config()
  c.workdir = str(workdir)
  for key, value in overrides.items():
    section, field = key.split("__")
    c[section][field] = value
  return c


def _train_losses(workdir):
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if rec["split"] == "train":
        out[rec["step"]] = rec["loss"]
  return out


def _env(cache_dir=None, fast=False):
  """Subprocess env; `fast`: quick unoptimised XLA compiles; `cache_dir`: share compilations."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  if fast or cache_dir:
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  if cache_dir:  # the runs compile the same programs
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def _cli(workdir):
  return [sys.executable, "-m", "experiments.finetune", "--config", "configs/smoke.py",
          f"--config.workdir={workdir}"]


def test_run_outputs_and_sigkill_resume_matches_uninterrupted(tmp_path):
  killed, ref_dir, marker = tmp_path / "killed", tmp_path / "ref", tmp_path / "hanging"
  env = _env(tmp_path / "xla_cache")
  proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(ref_dir), str(killed),
                           str(marker)],
                          env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  sigkill_when(proc, lambda: marker.exists() and (killed / "checkpoints" / "4").is_dir(),
               lambda: proc.stdout.read().decode(), timeout=240, what="step 6 of the killed run")
  assert max(_train_losses(killed)) == 5  # logged up to step 5, checkpointed at 4

  resume = subprocess.run(_cli(killed), env=env,  # the CLI, as a user would rerun cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert resume.returncode == 0, resume.stderr[-3000:]
  ref_losses, resumed_losses = _train_losses(ref_dir), _train_losses(killed)
  assert sorted(ref_losses) == sorted(resumed_losses) == list(range(1, 13))
  np.testing.assert_allclose([resumed_losses[s] for s in range(1, 13)],
                             [ref_losses[s] for s in range(1, 13)], rtol=0, atol=1e-6)
  ref_record = json.loads((ref_dir / "result.json").read_text())
  resumed_record = json.loads((killed / "result.json").read_text())
  assert resumed_record["metrics"]["test"]["accuracy"] == pytest.approx(
      ref_record["metrics"]["test"]["accuracy"], abs=1e-6)
  assert resumed_record["examples_seen"] == ref_record["examples_seen"] == 12 * 16

  # The run directory and the result record.
  for key in ("kind", "method", "task", "seed", "config", "git_sha", "metrics", "params_total",
              "params_trainable", "train_seconds", "examples_seen", "train_flops"):
    assert key in ref_record, key
  assert ref_record["kind"] == "finetune" and ref_record["method"] == "finetune_full"
  assert set(ref_record["metrics"]["test"]) >= {"accuracy", "macro_f1", "per_class"}
  assert ref_record["params_trainable"] == ref_record["params_total"] > 0
  assert sorted(int(s) for s in os.listdir(ref_dir / "checkpoints") if s.isdigit()) == [8, 12]
  assert train.has_exported_params(ref_dir)
  params, model_cfg = train.load_run_params(ref_dir)
  assert model_cfg.num_layers == 2 and model_cfg.hidden_size == 32 and model_cfg.num_labels == 4
  assert params["head"]["kernel"].shape == (32, 4)
  splits = [json.loads(l)["split"] for l in open(ref_dir / "metrics.jsonl")]
  assert splits.count("validation") == 2 and splits.count("test") == 1


# From step 3 on the learning rate is NaN, so the update of step 4 poisons the params; LoRA so
# that the best export (step 2) is a merged one.
NAN_RUN = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from configs import smoke
    from research import train
    from research.train import optim

    good = optim.make_schedule
    optim.make_schedule = lambda o, n: lambda s: jnp.where(s >= 3, jnp.nan, good(o, n)(s))
    config = smoke.get_config()
    config.workdir = sys.argv[1]
    config.train.checkpoint_every = 2
    config.train.eval_every = 2
    config.mask.rule = "lora"
    config.mask.lora_targets = r"attn/(query|value)|mlp/up"
    try:
      train.run(config)
    except FloatingPointError as e:
      print("STOPPED:", e)
""")


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  proc = subprocess.run([sys.executable, "-c", NAN_RUN, str(tmp_path)], env=_env(fast=True),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r"STOPPED: non-finite .* step 4.*Last good checkpoint: step 2", proc.stdout), (
      proc.stdout[-2000:])
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2]
  assert not (tmp_path / "result.json").exists()
  params, _ = train.load_run_params(tmp_path)  # LoRA merged into the exported params
  assert "lora" not in params and np.isfinite(params["head"]["kernel"]).all()


@pytest.mark.parametrize("overrides,match", [
    (dict(mask__rule="last_k", mask__k=3), r"mask.k=3 but the model has 2 layers"),
    (dict(mask__rule="regex", mask__regex="no_such_param"), r"matches no parameter"),
    (dict(mask__rule="lora", mask__lora_targets="attn/nothing"), r"matches no 2-D kernel"),
    (dict(train__parallel="pjit"), r"train.parallel"),
    (dict(optim__grad_accum=3), r"divisible by optim.grad_accum"),
])
def test_bad_config_fails_before_compute(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train.run(_config(tmp_path, **overrides))
  assert not (tmp_path / "checkpoints").exists()


def test_cli_rejects_config_typo(tmp_path):
  proc = subprocess.run(
      _cli(tmp_path) + ["--config.optim.lrr=1e-3"],
      env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "lrr" in proc.stderr and not (tmp_path / "checkpoints").exists()


def test_train_flops_come_from_xla_cost_analysis_and_see_the_mask(tmp_path):
  full = train.run(_config(tmp_path / "full", train__max_steps=2, train__eval_every=2,
                           train__checkpoint_every=2))
  head = train.run(_config(tmp_path / "head", train__max_steps=2, train__eval_every=2,
                           train__checkpoint_every=2, mask__rule="head_only"))
  for record in (full, head):
    assert record["train_flops_source"] == "xla_cost_analysis"
    assert record["train_flops"] > 0 and record["train_flops_analytic"] > 0
  # Full fine-tuning: XLA's count of the compiled step agrees with the matmul count (the rest is
  # softmax, layer norms, the optimizer: small next to the matmuls even at this toy width).
  assert 0.8 < full["train_flops"] / full["train_flops_analytic"] < 2.0, full
  # Head-only: the frozen encoder's backward is dead code XLA removes, so the step costs about a
  # forward pass, a third of full fine-tuning.
  assert head["train_flops"] < 0.6 * full["train_flops"], (head, full)
