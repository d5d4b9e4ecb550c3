"""TFDS builders for the project's domain datasets, importable by dataset name."""

from research.data.builders.banking77 import Banking77
from research.data.builders.claudette_tos import ClaudetteTos
from research.data.builders.financial_phrasebank import FinancialPhrasebank
from research.data.builders.nicta_piboso import NictaPiboso
from research.data.builders.pubmedqa_pqal import PubmedqaPqal

# dataset name -> builder class (the TFDS name of each class is the same snake_case name).
BUILDERS = {cls.name: cls for cls in (FinancialPhrasebank, Banking77, ClaudetteTos, NictaPiboso,
                                      PubmedqaPqal)}
