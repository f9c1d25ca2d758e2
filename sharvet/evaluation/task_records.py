"""Checks of one task record and its rewrite in the schema of the hub dataset lm-eval's built-in task reads.

A record without the fields its task needs raises :class:`BadRecord`; the caller adds file and record index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class BadRecord(ValueError):
    """A record that does not have the fields its task needs (the caller adds file and index)."""


def _text(record: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise BadRecord(f"field {key!r} must be a {'' if allow_empty else 'non-empty '}string, got {value!r}")
    return value


def _index(record: Mapping[str, Any], key: str, n: int, *, base: int = 0) -> int:
    """An answer index given as an int or a digit string, checked to lie in ``base .. base + n - 1``."""
    value = record.get(key)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not base <= value < base + n:
        raise BadRecord(f"field {key!r} must be one of {list(range(base, base + n))}, got {value!r}")
    return value


def _strings(values: Any, what: str, *, minimum: int = 2) -> list[str]:
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) < minimum:
        raise BadRecord(f"{what} must be a list of at least {minimum} strings, got {values!r}")
    if not all(isinstance(v, str) and v for v in values):
        raise BadRecord(f"{what} must hold non-empty strings, got {list(values)!r}")
    return list(values)


def copa(r: Mapping[str, Any]) -> dict[str, Any]:
    """SuperGLUE COPA (``val.jsonl``), as ``aps/super_glue`` ``copa`` has it."""
    question = _text(r, "question")
    if question not in ("cause", "effect"):
        raise BadRecord(f"field 'question' must be 'cause' or 'effect', got {question!r}")
    doc = {key: _text(r, key) for key in ("premise", "choice1", "choice2")}
    return {**doc, "question": question, "label": _index(r, "label", 2)}


def piqa(r: Mapping[str, Any]) -> dict[str, Any]:
    """PIQA (``valid.jsonl`` with its labels merged in), as ``baber/piqa`` has it."""
    return {"goal": _text(r, "goal"), "sol1": _text(r, "sol1"), "sol2": _text(r, "sol2"),
            "label": _index(r, "label", 2)}


def _arc_choices(r: Mapping[str, Any]) -> tuple[str, list[str], list[str]]:
    """Question, choice texts and labels of the AI2 release (nested ``question``) or the HF layout (flat)."""
    question = r.get("question")
    if isinstance(question, Mapping):  # AI2 jsonl: {"question": {"stem", "choices": [{"text", "label"}]}}
        choices = question.get("choices")
        if not isinstance(choices, Sequence) or not all(isinstance(c, Mapping) for c in choices):
            raise BadRecord(f"field 'question.choices' must be a list of {{text, label}} objects, got {choices!r}")
        texts = [c.get("text") for c in choices]
        labels = [str(c.get("label")) if c.get("label") is not None else None for c in choices]
        stem = _text(question, "stem")
    else:  # allenai/ai2_arc: question, choices {"text": [...], "label": [...]}
        choices = r.get("choices")
        if not isinstance(choices, Mapping):
            raise BadRecord(f"field 'choices' must be an object with lists 'text' and 'label', got {choices!r}")
        texts, labels = list(choices.get("text") or []), [str(x) for x in choices.get("label") or []]
        stem = _text(r, "question")
    texts = _strings(texts, "choice texts")
    labels = _strings(labels, "choice labels")
    if len(texts) != len(labels):
        raise BadRecord(f"{len(texts)} choice texts but {len(labels)} choice labels")
    return stem, texts, labels


def arc(r: Mapping[str, Any]) -> dict[str, Any]:
    """ARC (AI2 ``ARC-Easy-Test.jsonl`` or ``allenai/ai2_arc`` files), as ``allenai/ai2_arc`` has it."""
    stem, texts, labels = _arc_choices(r)
    key = r.get("answerKey")
    if str(key) not in labels:
        raise BadRecord(f"field 'answerKey' {key!r} is not one of the choice labels {labels}")
    return {"id": str(r.get("id", "")), "question": stem, "choices": {"text": texts, "label": labels},
            "answerKey": str(key)}


def winogrande(r: Mapping[str, Any]) -> dict[str, Any]:
    """WinoGrande (``dev.jsonl`` of winogrande_1.1), as ``allenai/winogrande`` has it (answer "1" or "2")."""
    sentence = _text(r, "sentence")
    if "_" not in sentence:
        raise BadRecord("field 'sentence' has no '_' blank to fill")
    return {"sentence": sentence, "option1": _text(r, "option1"), "option2": _text(r, "option2"),
            "answer": str(_index(r, "answer", 2, base=1))}


def lambada(r: Mapping[str, Any]) -> dict[str, Any]:
    """LAMBADA OpenAI (``lambada_test.jsonl``), as ``EleutherAI/lambada_openai`` has it."""
    return {"text": _text(r, "text")}


def hellaswag(r: Mapping[str, Any]) -> dict[str, Any]:
    """HellaSwag (``hellaswag_val.jsonl``), as ``Rowan/hellaswag`` has it (label as a string)."""
    endings = _strings(r.get("endings"), "field 'endings'")
    doc = {key: _text(r, key, allow_empty=True) for key in ("activity_label", "ctx_a", "ctx_b")}
    ctx = r.get("ctx") if isinstance(r.get("ctx"), str) else f"{doc['ctx_a']} {doc['ctx_b']}".strip()
    return {**doc, "ctx": ctx, "endings": endings, "label": str(_index(r, "label", len(endings)))}

