"""The LLM grid, bfsi: SmolLM2-135M-Instruct on Financial PhraseBank (AllAgree), methods as data.

The same grid machinery as the encoder tables (research/grid.py: resumable cells, teachers first,
stale checks, paired tests vs the same-init control in the report), on the causal-LM task of
configs/sft_phrasebank.py. Rows:
  sft_full †            every parameter (the teacher of the students below)
  sft_lora              LoRA r16 on every linear layer (q, k, v, o, gate, up, down; + final norm)
  sft_last_k            the last 10 of 30 blocks + final norm (tied embeddings frozen)
  sft_norm_only         RMSNorm scales only (the decoder's BitFit: it has no biases)
  control_teacher_init  10 of the teacher's 30 layers (0, 3, ..., 27), ground-truth answers only
  tok_kl / tok_reverse_kl / tok_jsd   the same student, 0.5 answer NLL + 0.5 token-level KD against
                        the teacher's cached top-64 log-probs (Hinton / MiniLLM / GKD's JSD)
  gkd_on_policy         tok_jsd with half of each batch the student's own samples, scored live
  seq_kd_smollm2        the answer NLL on the teacher's greedy answers (Kim & Rush 2016): make them
                        first with experiments/teacher_generate.py --teacher=<sft_full seed-s run>
                        --out=runs/seqkd/phrasebank_allagree/smollm2_sft_full_seed<s>.jsonl
Learning rates: 5e-5 (full SFT), 1e-4 (last-k, students), 1e-3 (norm-only), one epoch, set before
any sweep (the validation sweep is `<this file>:phrasebank_allagree:lr=<x>`). LoRA: r16 on every
linear layer at 5e-4, chosen on validation accuracy over r8 on q/v at 2e-4 (0.969 vs 0.916, seed 0;
results/llm_bfsi/README.md).

  python -m experiments.compare --config configs/llm_bfsi.py                       # 3 seeds
  python -m experiments.compare --config configs/llm_bfsi.py --config.seeds='(0,)' --only sft_
  python -m experiments.llm_table ...   # batch-1 prefill / decode tokens/s of every shape

On this 2-core CPU: full SFT ≈ 19 min, a 10-layer student ≈ 9-10 min per epoch (results/llm_bfsi/).
The grid's latency pass times encoder shapes only; decoder speed comes from llm_table.
"""

import ml_collections

from configs import grid_common
from configs import sft_phrasebank

STUDENT_LAYERS = tuple(range(0, 30, 3))
SEQ_KD_ANSWERS = "runs/seqkd/phrasebank_allagree/smollm2_sft_full_seed{seed}.jsonl"


def _student(losses: dict, **distill) -> ml_collections.ConfigDict:
  run = {"mask": {"rule": "full"}, "optim": {"lr": 1e-4},
         "distill": {"student_init": "layers", "student_layers": STUDENT_LAYERS,
                     "losses": losses, "temperature": 1.0, "cache_top_k": 64, **distill}}
  return ml_collections.ConfigDict({"run": run, "teachers": ("sft_full",), "is_teacher": False})


def _sft(mask: dict, lr: float, is_teacher: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"run": {"mask": mask, "optim": {"lr": lr}}, "teachers": (),
                                    "is_teacher": is_teacher})


def method_defs() -> ml_collections.ConfigDict:
  soft = {"ce": 0.5}
  return ml_collections.ConfigDict({
      "sft_full": _sft({"rule": "full"}, 5e-5, is_teacher=True),
      "sft_lora": _sft({"rule": "lora", "lora_rank": 16, "lora_alpha": 32.0,
                        "lora_targets": r"(attn/(q|k|v|o)|mlp/(gate|up|down))$"}, 5e-4),
      "sft_last_k": _sft({"rule": "last_k", "k": 10}, 1e-4),
      "sft_norm_only": _sft({"rule": "bitfit"}, 1e-3),
      "control_teacher_init": _student({"ce": 1.0}),
      "tok_kl": _student({**soft, "tok_kl": 0.5}),
      "tok_reverse_kl": _student({**soft, "tok_reverse_kl": 0.5}),
      "tok_jsd": _student({**soft, "tok_jsd": 0.5}),
      "gkd_on_policy": _student({**soft, "tok_jsd": 0.5}, on_policy=0.5, cache_top_k=0),
      "seq_kd_smollm2": ml_collections.ConfigDict({
          **_student({"ce": 1.0}, cache_top_k=0).to_dict(),
          "run": {**_student({"ce": 1.0}, cache_top_k=0).run.to_dict(),
                  "data": {"answers": SEQ_KD_ANSWERS}}}),
  })


def get_config(arg: str = ""):
  g = grid_common.grid_config("llm_bfsi")
  g.run = sft_phrasebank.get_config()
  g.run.tags.domain = "llm_bfsi"
  g.method_defs = method_defs()
  # Run order (a grid cut short still has the central comparison): teacher, control, KD, SFT rows.
  g.methods = ("sft_full", "control_teacher_init", "tok_kl", "tok_jsd", "tok_reverse_kl",
               "gkd_on_policy", "seq_kd_smollm2", "sft_lora", "sft_last_k", "sft_norm_only")
  g.results_dir = "results/llm_bfsi/grid"   # beside llm_table's table of the first cells
  task = ml_collections.ConfigDict({"name": "phrasebank_allagree", "run": {}})
  g.tasks = [task]
  g.data_efficiency.enabled = False
  g.latency = None            # decoder speed: experiments/llm_table.py
  g.disk.keep_final = False   # 0.5 GB per SFT run: the best params are what a student needs
  grid_common.sweep_variant(g, task, arg, methods=("sft_full", "control_teacher_init", "tok_kl"))
  return g
