"""BFSI grid: Financial PhraseBank (AllAgree) and Banking77, MiniLM-L6 teacher, every method.

Commands:
  python -m experiments.compare                                   # quick: phrasebank, 1 seed
  python -m experiments.compare --config configs/bfsi.py          # the committed table
  python -m experiments.compare --config configs/bfsi.py:phrasebank
"""

from configs import finetune_banking77
from configs import finetune_phrasebank_allagree
from configs import grid_common


def get_config(arg: str = ""):
  g = grid_common.grid_config("bfsi")
  phrasebank = grid_common.task("phrasebank_allagree", finetune_phrasebank_allagree.get_config())
  banking = grid_common.task("banking77", finetune_banking77.get_config())
  g.tasks = [phrasebank, banking]
  g.methods = tuple(g.methods) + ("kd_soft_alpha0",)  # soft targets only, no ground-truth labels
  g.data_efficiency.tasks = ("phrasebank_allagree",)
  g.data_efficiency.seeds = (0, 1, 2)
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
