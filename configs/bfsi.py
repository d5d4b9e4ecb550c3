"""BFSI grid: Financial PhraseBank (AllAgree) and Banking77, MiniLM-L6 teacher, every method.

Commands:
  python -m experiments.compare                                   # quick: phrasebank, 1 seed
  python -m experiments.compare --config configs/bfsi.py          # the committed table
  python -m experiments.compare --config configs/bfsi.py:phrasebank
  python -m experiments.compare --config configs/bfsi.py:phrasebank_allagree:lr=5e-5   # lr sweep cell
  python -m research.sweep results/bfsi                                   # the sweep's choice
"""

import ml_collections

from configs import finetune_banking77
from configs import finetune_phrasebank_allagree
from configs import grid_common

# experiments/teacher_label_logits.py's output for the full-SFT SmolLM2 teacher (README, bfsi).
LLM_TEACHER_LOGITS = "runs/cross_family/phrasebank_allagree/smollm2_sft_full.npz"


def get_config(arg: str = ""):
  g = grid_common.grid_config("bfsi")
  phrasebank = grid_common.task("phrasebank_allagree", finetune_phrasebank_allagree.get_config())
  banking = grid_common.task("banking77", finetune_banking77.get_config())
  g.tasks = [phrasebank, banking]
  # PhraseBank's validation sweep (results/bfsi/sweep/sweep.md, seed 0; 5e-5 / 1e-4 / 2e-4): 1e-4
  # (the task's rate) for the teacher, the same-init control and the KD students; 2e-4 for these.
  phrasebank.method_lr = ml_collections.ConfigDict(
      {"control_pretrained_init": 2e-4, "kd_soft_smollm2_encoder": 2e-4})
  # Cross-family KD: the 3-layer student from the *pretrained* encoder (its same-init control is
  # control_pretrained_init), soft targets from SmolLM2-135M fine-tuned on PhraseBank (30 layers,
  # 135M params; experiments/teacher_label_logits.py writes the file, from the decoder's top-k
  # cache). The same soft-target loss, temperature and epochs as kd_soft.
  m = g.methods_cfg
  g.method_defs.kd_soft_smollm2_encoder = ml_collections.ConfigDict({
      "run": {"model": {"layers": m.get_ref("student_layers")},
              "distill": {"teacher_logits": LLM_TEACHER_LOGITS, "student_init": "fresh",
                          "temperature": m.get_ref("temperature"),
                          "losses": {"ce": 1 - m.get_ref("alpha"), "kd_kl": m.get_ref("alpha")}},
              "train": {"epochs": m.get_ref("kd_epochs")}},
      "teachers": (), "is_teacher": False, "tasks": ("phrasebank_allagree",)})
  g.methods = tuple(g.methods) + ("kd_soft_smollm2_encoder",)
  g.data_efficiency.tasks = ("phrasebank_allagree",)
  g.data_efficiency.seeds = (0, 1, 2)
  if grid_common.sweep_variant(g, phrasebank, arg) or grid_common.sweep_variant(g, banking, arg):
    return g
  if arg in ("phrasebank", "quick"):
    g.tasks = [phrasebank]
  if arg == "quick":
    # The README's first command (~15 min on 2 CPU cores): the central comparison — teacher,
    # linear probe, masked fine-tune, a 3-layer KD student — with one seed and half the epochs;
    # results go outside results/.
    g.methods = ("finetune_full", "head_only", "finetune_last_k", "kd_soft")
    phrasebank.run.train.epochs = 2.0
    g.methods_cfg.head_only_epochs = 4.0
    g.methods_cfg.kd_epochs = 2.0
    g.seeds = (0,)
    g.data_efficiency.enabled = False
    g.results_dir = "runs/quickstart/bfsi"
    g.runs_dir = "runs/quickstart/bfsi_runs"  # outside results_dir: the report reads that tree
  return g
