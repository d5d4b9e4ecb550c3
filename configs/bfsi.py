"""BFSI grid: Financial PhraseBank (AllAgree) and Banking77, MiniLM-L6 teacher, every method.

Commands:
  python -m experiments.compare                                   # quick: phrasebank, 1 seed
  python -m experiments.compare --config configs/bfsi.py          # the committed table
  python -m experiments.compare --config configs/bfsi.py:phrasebank
"""

from configs import grid_common


def get_config(arg: str = ""):
  g = grid_common.grid_config("bfsi")
  phrasebank = grid_common.task(
      "phrasebank_allagree", "financial_phrasebank", "allagree",
      data={"max_length": 96, "buckets": (32, 64, 96), "batch_size": 32},
      optim={"lr": 1e-4}, train={"epochs": 4.0})
  banking = grid_common.task(
      "banking77", "banking77", "default",
      data={"max_length": 64, "buckets": (16, 32, 64), "batch_size": 32},
      optim={"lr": 2e-4}, train={"epochs": 4.0})
  g.tasks = [phrasebank, banking]
  g.data_efficiency.tasks = ("phrasebank_allagree",)
  g.data_efficiency.seeds = (0, 1, 2)
  if arg in ("phrasebank", "quick"):
    g.tasks = [phrasebank]
  if arg == "quick":
    # The README's first command: one seed, no data-efficiency study, results outside results/.
    g.seeds = (0,)
    g.data_efficiency.enabled = False
    g.results_dir = "runs/quickstart/bfsi"
    g.runs_dir = "runs/quickstart/bfsi/runs"
  return g
