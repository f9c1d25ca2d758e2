"""Fixed document splits of evaluation files that also feed calibration and fine-tuning.

The C4 validation subset is the only general-domain text besides WikiText-2 here: its first 1,000 documents
are for calibration and fine-tuning, the other 1,000 are held out for perplexity, so no evaluated document is
ever trained on. Kept apart from :mod:`sharvet.data` (which applies it) and :mod:`sharvet.training_data`
(which documents it) so neither imports the other for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DocumentSplit:
    """A fixed split of one local file's documents: ``[0, train_docs)`` to train, the rest held out."""

    path: Path
    train_docs: int

    def select(self, documents: list[str], split: str) -> list[str]:
        """The documents of ``split`` (``train``, else the held-out ones)."""
        return documents[: self.train_docs] if split == "train" else documents[self.train_docs:]


#: dataset name -> (file in its local folder, documents used for calibration and fine-tuning)
FIXED_SPLITS: dict[str, tuple[str, int]] = {"c4": ("c4-validation-subset-2000.json.gz", 1000)}


def fixed_split(dataset: str, folder: Path) -> DocumentSplit | None:
    """The fixed split of ``dataset`` if its file is in ``folder`` (the local dataset folder), else None."""
    if dataset not in FIXED_SPLITS:
        return None
    name, train_docs = FIXED_SPLITS[dataset]
    path = folder / name
    return DocumentSplit(path, train_docs) if path.is_file() else None
