"""A 10-of-30-layer SmolLM2 student of the SFT'd SmolLM2-135M teacher on PhraseBank AllAgree.

The student copies teacher layers 0, 3, ..., 27 (LoRA merged) and trains every parameter on the
chat task of configs/sft_phrasebank.py. The config argument picks the row (its distill.losses):
  control_teacher_init   {"ce": 1}                   ground-truth answers only (the same-init control)
  tok_kl                 {"ce": 0.5, "tok_kl": 0.5}  forward KL per answer token (Hinton; Kim & Rush)
  tok_reverse_kl         {"ce": 0.5, "tok_reverse_kl": 0.5}   reverse KL (MiniLLM)
  tok_jsd                {"ce": 0.5, "tok_jsd": 0.5}  generalized JSD, distill.beta (GKD)
  gkd_on_policy          {"ce": 0.5, "tok_jsd": 0.5} with distill.on_policy = 0.5: half of each
                         batch's answers sampled by the student (T = 1), scored by the live
                         teacher (GKD, Agarwal et al. 2024); about 3x a control step
  seq_kd_smollm2         {"ce": 1} on the teacher's greedy answers to the train prompts, no gold
                         answer read (Kim & Rush 2016; experiments/teacher_generate.py makes them)
Token KD reads the teacher's top-64 next-token log-probs + tail, cached once in the teacher's run
dir (distill.cache_top_k), so every KD row costs what the control costs.

Launch (the teacher first: configs/sft_phrasebank.py into runs/sft/phrasebank_allagree/lora_r8_lr2e-4):
  python -m experiments.distill --config configs/llm_student_phrasebank.py:tok_kl \
      [--config.seed=1 --config.workdir=runs/llm_bfsi/phrasebank_allagree/tok_kl_seed1]
"""

import ml_collections

from configs import sft_phrasebank


METHODS = {
    "control_teacher_init": {"ce": 1.0},
    "seq_kd_smollm2": {"ce": 1.0},  # on the SFT teacher's generated answers (data.answers)
    "gkd_on_policy": {"ce": 0.5, "tok_jsd": 0.5},  # half the rows: the student's own samples
    "tok_kl": {"ce": 0.5, "tok_kl": 0.5},
    "tok_reverse_kl": {"ce": 0.5, "tok_reverse_kl": 0.5},
    "tok_jsd": {"ce": 0.5, "tok_jsd": 0.5},
}


def get_config(method: str = "control_teacher_init") -> ml_collections.ConfigDict:
  """python -m experiments.distill --config configs/llm_student_phrasebank.py:<row>"""
  if method not in METHODS:
    raise ValueError(f"row {method!r}; use one of {sorted(METHODS)} "
                     "(--config configs/llm_student_phrasebank.py:<row>).")
  c = sft_phrasebank.get_config()
  c.name = "llm_student_phrasebank_allagree"
  c.tags.domain = "llm_bfsi"
  c.tags.method = f"{method}_L10"
  c.workdir = f"runs/llm_bfsi/phrasebank_allagree/{method}_seed0"  # set it for other seeds
  c.mask.rule = "full"
  c.optim.lr = 1e-4
  c.distill.teacher = "runs/sft/phrasebank_allagree/lora_r8_lr2e-4"
  c.distill.student_init = "layers"
  c.distill.student_layers = tuple(range(0, 30, 3))
  c.distill.losses = ml_collections.ConfigDict(METHODS[method])
  c.distill.temperature = 1.0
  c.distill.cache_top_k = 64
  if method == "gkd_on_policy":
    c.distill.on_policy, c.distill.cache_top_k = 0.5, 0
  if method.startswith("seq_kd"):
    c.data.answers = "runs/seqkd/phrasebank_allagree/smollm2_sft_lora.jsonl"
  return c
