"""Make a checkpoint folder load with plain transformers, as Hub models with custom layers are published.

:func:`write_remote_code` puts ``modeling_sharvet.py`` (torch and transformers only) beside the weights and
names its classes in config.json's ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` rebuilds the compressed model on a machine without sharvet. It also records in
``sharvet_modules`` where each module type of the plan lives and its shapes: the architecture knowledge that
stays in :mod:`sharvet.models`. ``model_type`` is left as it is, so sharvet's own loader (and any reader that
does not trust remote code) still gets the original architecture's config.
"""
from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..models import adapter_for

MODELING_FILE = "modeling_sharvet.py"
TEMPLATE = Path(__file__).with_name(MODELING_FILE)
#: the template's line naming the architecture, rewritten for each checkpoint
BASE_LINE = 'BASE_MODEL_TYPE = "llama"'
AUTO_MAP = {"AutoConfig": "modeling_sharvet.SharvetConfig",
            "AutoModelForCausalLM": "modeling_sharvet.SharvetForCausalLM"}


def modeling_code(model_type: str) -> str:
    """The modeling file for a checkpoint of ``model_type`` (the template with its base architecture set)."""
    text = TEMPLATE.read_text()
    if text.count(BASE_LINE) != 1:
        raise RuntimeError(f"{TEMPLATE} must hold the line {BASE_LINE!r} exactly once")
    return text.replace(BASE_LINE, f"BASE_MODEL_TYPE = {json.dumps(model_type)}")


def module_spec(model: nn.Module) -> dict:
    """Where the layers and each module type live, and each type's ``in`` / ``out`` size and bias."""
    adapter = adapter_for(model)
    types = {}
    for t in adapter.type_names:
        d_in, d_out = adapter.shape(t)
        types[t] = {"path": adapter.module_type(t).path, "in": d_in, "out": d_out,
                    "bias": adapter.bias(0, t) is not None}
    return {"layers": adapter.layers_path, "types": types}


def write_remote_code(folder: Path, model: nn.Module) -> None:
    """Add the modeling file, ``auto_map`` and ``sharvet_modules`` to a checkpoint folder being written."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = AUTO_MAP
    config["sharvet_modules"] = module_spec(model)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / MODELING_FILE).write_text(modeling_code(config["model_type"]))
