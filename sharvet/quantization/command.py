"""``sharvet eval --quantize BITS``: evaluate a model (original or checkpoint) after RTN quantisation."""
from __future__ import annotations

import argparse

from ..argtypes import at_least
from ..loading import LoadedModel
from .model import quantize_model


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weight-only RTN quantisation (paper Table 11)")
    g.add_argument("--quantize", type=int, default=None, choices=range(2, 9), metavar="BITS",
                   help="quantise the decoder linear modules (a checkpoint's shared bases once, V per layer) to "
                        "BITS before evaluating; the stored bytes are printed and recorded")
    g.add_argument("--quant-group-size", type=at_least(1), default=128, help="input columns per scale/zero point")


def quantized(a: argparse.Namespace) -> LoadedModel:
    """Load ``a.model`` as ``sharvet eval`` would and quantise it in place; the report rides on the model."""
    from ..api import load_any

    loaded = load_any(a.model, device=a.device, dtype=a.dtype, verify=not a.no_verify)
    report = quantize_model(loaded.model, a.quantize, a.quant_group_size)
    print(report.line())
    loaded.model.sharvet_quantization = report.to_dict()
    return LoadedModel(loaded.model, loaded.tokenizer, f"{loaded.model_id} (RTN {a.quantize}-bit, group "
                       f"{a.quant_group_size})")
