"""A decoder teacher against its encoder student: per-example CPU cost of the same classification.

The teacher classifies a test sentence by label scoring (one prefill of its chat prompt, then the
label options; research/zero_shot.py's DecoderLM), the student by one encoder forward of the
sentence (the table's shape and width). Both are timed in one process, interleaved over rounds
(p50 = median of the round medians), and their analytic forward FLOPs per example are given beside
the depth and parameter counts: the size gap distillation is asked to close.

  python -m experiments.bench_cross_family --teacher=runs/sft/phrasebank_allagree/full_lr5e-5 \
      --student_record=results/bfsi/cells/phrasebank_allagree__kd_soft_smollm2_encoder__seed0.json \
      --out=results/bfsi/cross_family_speed.json
"""

import json
import pathlib
import time

from absl import flags
import numpy as np

from experiments import cli
from research import cost
from research import latency
from research import zero_shot
from research.data import prompts
from research.models import registry

_TEACHER = flags.DEFINE_string("teacher", None, "The decoder teacher's run dir.")
_STUDENT = flags.DEFINE_string("student_record", None, "A student cell record (its model shape).")
_TASK = flags.DEFINE_string("task", "phrasebank_allagree", "Prompt task of the teacher.")
_N = flags.DEFINE_integer("examples", 16, "Test sentences timed per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_SEQ = flags.DEFINE_integer("seq_len", 64, "The student's input width (the table's).")
_OUT = flags.DEFINE_string("out", None, "Output JSON.")


def _teacher_inputs(tok, task, n: int) -> list[tuple[list[int], list[list[int]]]]:
  examples = zero_shot.load_examples(task, "test", type("D", (), {"manual_dir": "",
                                                                  "data_dir": ""})())[:n]
  out = []
  for ex in examples:
    messages = prompts.build_messages(task, ex, [], context_words=200)
    text = tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = tok.encode(text)
    options = zero_shot.option_token_ids(tok, text, ids, task.label_strings,
                                         zero_shot.answer_suffix(tok, messages))
    out.append((ids, options))
  return out


def main(argv):
  del argv
  task = zero_shot.load_task(_TASK.value)
  tok, lm, _ = zero_shot.load_teacher(_TEACHER.value, "float32")
  inputs = _teacher_inputs(tok, task, _N.value)
  record = json.loads(pathlib.Path(_STUDENT.value).read_text())
  s_cfg, s_params, s_apply, make_batch = latency._classifier(record["model"], _SEQ.value)  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  s_fn = jax.jit(s_apply)
  batch = make_batch(1)
  for ids, options in inputs:  # compile every prompt bucket and option shape once
    lm.score(lm.prefill(ids), options)
  jax.block_until_ready(s_fn(s_params, batch))
  t_rounds, s_rounds = [], []
  for _ in range(_ROUNDS.value):
    times = []
    for ids, options in inputs:
      t0 = time.perf_counter()
      lm.score(lm.prefill(ids), options)  # returns host numpy: synchronised
      times.append(time.perf_counter() - t0)
    t_rounds.append(float(np.median(times)))
    times = []
    for _ in range(len(inputs)):
      t0 = time.perf_counter()
      jax.block_until_ready(s_fn(s_params, batch))
      times.append(time.perf_counter() - t0)
    s_rounds.append(float(np.median(times)))
  t_cfg = lm.cfg
  prompt_len = float(np.mean([len(i) + max(map(len, o)) for i, o in inputs]))
  fam_t, fam_s = registry.get_family("llama"), registry.get_family("bert")
  t_flops = fam_t.analytic_flops(t_cfg, 1, int(round(prompt_len)), False)
  s_flops = fam_s.analytic_flops(s_cfg, 1, _SEQ.value, False)
  out = {
      "host_cpu": cost.host_cpu_name(), "rounds": _ROUNDS.value, "examples": len(inputs),
      "teacher": {"run": _TEACHER.value, "layers": t_cfg.num_layers,
                  "params": registry.count_params(lm.params),
                  "ms_per_example_p50": 1e3 * float(np.median(t_rounds)),
                  "round_medians_ms": [1e3 * x for x in t_rounds],
                  "mean_tokens": prompt_len, "forward_flops_per_example": t_flops,
                  "how": "label scoring: prefill of the chat prompt + the label options"},
      "student": {"record": _STUDENT.value, "layers": s_cfg.num_layers,
                  "params": record.get("params_total"),
                  "ms_per_example_p50": 1e3 * float(np.median(s_rounds)),
                  "round_medians_ms": [1e3 * x for x in s_rounds], "seq_len": _SEQ.value,
                  "forward_flops_per_example": s_flops, "how": "one encoder forward, batch 1"},
  }
  out["speedup"] = out["teacher"]["ms_per_example_p50"] / out["student"]["ms_per_example_p50"]
  out["flops_ratio"] = t_flops / s_flops
  out["depth_ratio"] = t_cfg.num_layers / s_cfg.num_layers
  path = pathlib.Path(_OUT.value)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"teacher {out['teacher']['ms_per_example_p50']:.1f} ms/example, student "
        f"{out['student']['ms_per_example_p50']:.2f} ms: {out['speedup']:.1f}x faster, "
        f"{out['flops_ratio']:.0f}x fewer FLOPs, {out['depth_ratio']:.0f}x shallower -> {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["teacher", "student_record", "out"])
  cli.run(main)
