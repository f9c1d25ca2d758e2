"""The zero-shot tasks sharvet knows: names and aliases, the paper's five, headline metrics, and per task where
its local data lives, how a record is checked and where the data comes from.

The paper's accuracies are lm-eval's COPA, PIQA, ARC-Easy, WinoGrande and LAMBADA (OpenAI); HellaSwag and
ARC-Challenge are run too when asked for (or by ``default`` when their data is present). How they are run:
:mod:`sharvet.evaluation.task_runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sharvet.evaluation import task_records as rec

#: The five tasks of the paper's Table 2, in its column order (CP, PQ, ARC, WG, LB).
PAPER_TASKS = ("copa", "piqa", "arc_easy", "winogrande", "lambada_openai")
#: Run by ``default`` only when their local data is present (they are not in the paper's table).
OPTIONAL_TASKS = ("hellaswag", "arc_challenge")
ALIASES = {"lambada": "lambada_openai", "arc-e": "arc_easy", "arc-easy": "arc_easy", "arc-c": "arc_challenge",
           "arc-challenge": "arc_challenge", "wg": "winogrande"}
#: Headline metric per task. Length-normalised accuracy where lm-eval reports it (PIQA, ARC, HellaSwag), as the
#: compression papers that use lm-eval do; plain accuracy for COPA, WinoGrande and LAMBADA, whose lm-eval
#: definitions have no acc_norm. Both acc and acc_norm are stored for every task that has them.
HEADLINE_METRICS = {"copa": "acc", "piqa": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm",
                    "winogrande": "acc", "lambada_openai": "acc", "hellaswag": "acc_norm"}


@dataclass(frozen=True)
class LocalTask:
    """Where a task's data lives in the data directory, how to check it, and how to obtain it."""

    name: str
    split: str  # the split lm-eval's built-in task evaluates: validation or test
    folders: tuple[str, ...]  # tried in order under DIR/tasks/
    example: str  # the file to put there, for messages
    origin: str  # where that file comes from
    hub: str  # the dataset lm-eval's built-in task downloads
    normalise: Callable[[Mapping[str, Any]], dict[str, Any]]
    labels_file: bool = False  # labels may sit in a separate "<stem>-labels.lst" (PIQA's release)


LOCAL_TASKS: dict[str, LocalTask] = {
    t.name: t
    for t in (
        LocalTask("copa", "validation", ("copa", "COPA"), "val.jsonl",
                  "SuperGLUE COPA.zip (premise, choice1, choice2, question, label)", "aps/super_glue copa", rec.copa),
        LocalTask("piqa", "validation", ("piqa",), "valid.jsonl + valid-labels.lst",
                  "ybisk/ybisk.github.io piqa/data (goal, sol1, sol2; labels one 0/1 a line)", "baber/piqa",
                  rec.piqa, labels_file=True),
        LocalTask("arc_easy", "test", ("arc_easy", "ARC-Easy", "arc-easy"), "ARC-Easy-Test.jsonl",
                  "the AI2 ARC release (question{stem, choices[{text, label}]}, answerKey), or the "
                  "allenai/ai2_arc ARC-Easy test parquet/jsonl", "allenai/ai2_arc ARC-Easy", rec.arc),
        LocalTask("arc_challenge", "test", ("arc_challenge", "ARC-Challenge", "arc-challenge"),
                  "ARC-Challenge-Test.jsonl", "the AI2 ARC release, or the allenai/ai2_arc ARC-Challenge test "
                  "parquet/jsonl", "allenai/ai2_arc ARC-Challenge", rec.arc),
        LocalTask("winogrande", "validation", ("winogrande",), "dev.jsonl",
                  "winogrande_1.1 (sentence, option1, option2, answer)", "allenai/winogrande winogrande_xl",
                  rec.winogrande),
        LocalTask("lambada_openai", "test", ("lambada_openai", "lambada"), "lambada_test.jsonl",
                  "OpenAI's LAMBADA test file (one {\"text\"} a line)", "EleutherAI/lambada_openai", rec.lambada),
        LocalTask("hellaswag", "validation", ("hellaswag",), "hellaswag_val.jsonl",
                  "rowanz/hellaswag data (activity_label, ctx_a, ctx_b, endings, label)", "Rowan/hellaswag",
                  rec.hellaswag),
    )
}


def canonical_task(name: str) -> str:
    """lm-eval's name for a task name or alias (``lambada`` -> ``lambada_openai``)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in LOCAL_TASKS:
        known = ", ".join([*LOCAL_TASKS, *ALIASES])
        raise ValueError(f"unknown task {name!r}; choose from {known}, or 'default'")
    return key
