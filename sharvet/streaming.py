"""Layer-streamed calibration for models whose weights or statistics do not fit the compute device.

As GPTQ / SparseGPT / llm-compressor's sequential pipeline: the calibration set is embedded once, then one
decoder layer at a time is brought to the compute device, every calibration batch runs through it with the
statistics hooks of :mod:`sharvet.calibration` attached, its outputs become the next layer's inputs, its
statistics are written to disk and the layer goes back where it was. The device holds one layer, one layer's
statistics and the hidden states; the host holds the model in its load dtype (transformers builds it on the
meta device and fills it shard by shard) and never the statistics (8B: 61 GiB of float64 ``X^T X``), which
:class:`StreamedStats` reads back lazily. A run that stops keeps every finished layer's file; the next run
with the same model and tokens recomputes the finished layers' outputs (forwards only) and goes on from there.

Per layer, the ``X^T X`` matrices are stored as their panels on and right of the diagonal (those of
:func:`sharvet.calibration.panels`, outside of which the accumulated matrix is an exact mirror), which halves
the disk without changing a bit.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch
from accelerate.utils import align_module_device, has_offloaded_params, send_to_device
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from .calibration import CalibrationStats, InputStats, cache_key, empty_layer_stats, hook_layer, panels
from .models import ModelAdapter, adapter_for
from .outputs import save_whole

STREAM_MODES = ("auto", "on", "off")
#: auto streams when the in-memory path's estimate exceeds this share of the free memory (the estimate leaves
#: out the allocator's fragmentation and the forward's temporaries beyond a few activations)
AUTO_SHARE = 0.8
GIB = 2**30
#: the most host memory :class:`StreamedStats` keeps by default (more only raises the host's peak)
CACHE_CAP = 8 * GIB


class WontFitError(ValueError):
    """The chosen calibration path needs more memory than the device has free (raised before it starts)."""


def layer_file(folder: Path, layer: int) -> Path:
    return folder / f"layer-{layer:05d}.safetensors"


def layer_tensors(per_key: dict[str, InputStats]) -> dict[str, torch.Tensor]:
    """One layer's statistics as host tensors named as in its file (``X^T X`` as its stored panels)."""
    tensors: dict[str, torch.Tensor] = {}
    for key, s in per_key.items():
        for start, stop in panels(len(s.xtx)):
            tensors[f"{key}.xtx.{start}"] = s.xtx[start:stop, start:].cpu().contiguous()
        tensors[f"{key}.total"] = s.total.cpu().contiguous()
        tensors[f"{key}.count"] = torch.tensor([s.count], dtype=torch.int64)
    return tensors


def save_layer(folder: Path, layer: int, tensors: dict[str, torch.Tensor]) -> None:
    """One layer's statistics (:func:`layer_tensors`) as a safetensors file, written to a temporary name and
    renamed when whole, so a file that exists is complete."""
    save_whole(tensors, layer_file(folder, layer))


def read_input(folder: Path, layer: int, key: str) -> InputStats:
    """One (layer, input) of a layer file, its ``X^T X`` rebuilt whole from the stored panels."""
    with safe_open(str(layer_file(folder, layer)), framework="pt") as f:
        total = f.get_tensor(f"{key}.total")
        d = len(total)
        xtx = None
        for start, stop in panels(d):
            slab = f.get_tensor(f"{key}.xtx.{start}")  # rows start:stop, columns start:
            xtx = torch.empty(d, d, dtype=slab.dtype) if xtx is None else xtx
            xtx[start:, start:stop] = slab.T
            xtx[start:stop, start:] = slab
        return InputStats(xtx=xtx, total=total, count=int(f.get_tensor(f"{key}.count").item()))


def finished_layers(folder: Path, num_layers: int) -> int:
    """How many layers, counted from the first, have their statistics on disk."""
    done = 0
    while done < num_layers and layer_file(folder, done).exists():
        done += 1
    return done


class StreamedStats(CalibrationStats):
    """Statistics read from a folder of per-layer files on first use, the most recent kept in host memory.

    ``cache_bytes`` bounds what is kept (by default a sixteenth of the host's memory, at most ``CACHE_CAP``: all
    layers' attention or MLP inputs of an 8B model, 4.3 GB, which similarity reads block by block).
    """

    def __init__(self, folder: str | Path, num_layers: int, cache_bytes: int | None = None,
                 keep: tempfile.TemporaryDirectory | None = None) -> None:
        super().__init__([])
        self.folder = Path(folder)
        self._num_layers = num_layers
        self.cache_bytes = min(psutil.virtual_memory().total // 16, CACHE_CAP) if cache_bytes is None else cache_bytes
        self._cache: OrderedDict[tuple[int, str], InputStats] = OrderedDict()
        self._keep = keep  # a temporary folder lives as long as the statistics read from it

    @property
    def num_layers(self) -> int:
        return self._num_layers

    def get(self, layer: int, input_key: str) -> InputStats:
        item = (layer, input_key)
        if item in self._cache:
            self._cache.move_to_end(item)
            return self._cache[item]
        s = read_input(self.folder, layer, input_key)
        self._cache[item] = s
        while len(self._cache) > 1 and sum(v.xtx.nbytes for v in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return s


@contextlib.contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Every parameter of ``module`` on ``device`` for the duration, then back where each was.

    Weights accelerate offloaded (big-model loading with ``device_map``) are read in once and its hooks are
    pointed at ``device`` and told not to reload them on every forward, so a layer runs every calibration batch
    from one read of its weights; afterwards they go back to the meta device and the hooks are as they were.
    """
    with contextlib.ExitStack() as stack:
        for m in module.modules():
            hook = getattr(m, "_hf_hook", None)
            if hook is None or not hasattr(hook, "execution_device"):
                stack.enter_context(align_module_device(m, device))
                continue
            stack.enter_context(_hook_pointed_at(hook, device))
            if has_offloaded_params(m):
                hook.pre_forward(m)  # reads the weights onto the device
                stack.callback(hook.post_forward, m, None)  # back to meta (runs after offload is restored)
                stack.enter_context(_hook_pointed_at(hook, device, offload=False))
            else:
                stack.enter_context(align_module_device(m, device))
        yield


@contextlib.contextmanager
def _hook_pointed_at(hook, device: torch.device, offload: bool | None = None) -> Iterator[None]:
    saved = hook.execution_device, hook.offload
    hook.execution_device = device
    hook.offload = saved[1] if offload is None else offload
    try:
        yield
    finally:
        hook.execution_device, hook.offload = saved


def offload_map(model: nn.Module, layers_path: str) -> dict[str, str]:
    """A ``device_map`` for ``from_pretrained`` keeping every decoder layer on disk and the rest on the host.

    transformers then reads the layers' weights from the checkpoint's own safetensors files when they are used
    (accelerate's disk offload; nothing is copied), so the host never holds the whole model.
    """
    out: dict[str, str] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if path == layers_path:
                out.update({f"{path}.{i}": "disk" for i in range(len(child))})
            elif layers_path.startswith(path + "."):
                walk(child, path + ".")
            elif any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                out[path] = "cpu"

    walk(model, "")
    return out


def load_offloaded(model: nn.Module) -> None:
    """Read every weight accelerate still keeps on disk onto the host and remove its hooks: after compression
    only the norms are left there, and the model must then behave as a plain one (saving, evaluation)."""
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import set_module_tensor_to_device

    for m in model.modules():
        if has_offloaded_params(m):
            for name, _ in m.named_parameters(recurse=False):
                set_module_tensor_to_device(m, name, "cpu", value=m._hf_hook.weights_map[name])
    remove_hook_from_module(model, recurse=True)
    if hasattr(model, "hf_device_map"):
        del model.hf_device_map


@torch.no_grad()
def collect_streamed(adapter: ModelAdapter, input_ids: torch.Tensor, folder: str | Path, *,
                     batch_size: int, device: torch.device | str, progress: bool = True,
                     keep: tempfile.TemporaryDirectory | None = None) -> StreamedStats:
    """Statistics of every layer, one layer on ``device`` at a time, written to ``folder`` layer by layer.

    Layers whose file already exists (an interrupted run) only run forwards, to rebuild the next inputs.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, device = adapter.num_layers, torch.device(device)
    done = finished_layers(folder, n)
    if done < n:
        model = adapter.model
        was_training = model.training
        model.eval()
        try:
            home = next(model.parameters()).device  # where the embeddings run: the model's own device
            first = [adapter.first_layer_inputs(batch.to(home)) for batch in input_ids.split(batch_size)]
            hidden = [send_to_device(h, device) for h, _ in first]
            rest = [send_to_device(r, device) for _, r in first]  # per layer kind: mask, positions, rotary cos/sin
            kinds = adapter.layer_kinds()
            del first
            bar = tqdm(range(n), desc="calibration (streamed)", unit="layer", disable=not progress)
            with ThreadPoolExecutor(max_workers=1) as writer:  # the disk writes one layer behind the device
                written = None
                for layer in bar:
                    per_key = empty_layer_stats(adapter, device) if layer >= done else {}
                    handles = hook_layer(adapter, layer, per_key)
                    try:
                        with on_device(adapter.layers[layer], device):
                            for i, r in enumerate(rest):  # in place: one batch's outputs beside the inputs
                                hidden[i] = adapter.run_layer(layer, hidden[i], r[kinds[layer]])
                    finally:
                        for h in handles:
                            h.remove()
                    if per_key:
                        tensors = layer_tensors(per_key)  # off the device now: the next layer reuses the memory
                        del per_key
                        if written is not None:
                            written.result()  # at most one layer's statistics wait in host memory
                        written = writer.submit(save_layer, folder, layer, tensors)
                if written is not None:
                    written.result()
        finally:
            model.train(was_training)
    return StreamedStats(folder, n, keep=keep)


def collect_or_load_streamed(adapter: ModelAdapter, input_ids: torch.Tensor, *, model_id: str,
                             cache_dir: str | Path | None, batch_size: int, device: torch.device | str,
                             progress: bool = True) -> StreamedStats:
    """Streamed statistics in ``cache_dir/calib-<key>/`` (resumed or reused), else in a temporary folder."""
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sharvet-calib-")
        return collect_streamed(adapter, input_ids, tmp.name, batch_size=batch_size, device=device,
                                progress=progress, keep=tmp)
    dtype = str(next(adapter.model.parameters()).dtype)
    folder = Path(cache_dir) / f"calib-{cache_key(model_id, input_ids, dtype)}"
    return collect_streamed(adapter, input_ids, folder, batch_size=batch_size, device=device, progress=progress)


# ---------------------------------------------------------------------- choosing the path
def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def stats_bytes(adapter: ModelAdapter) -> int:
    """One layer's float64 statistics (``X^T X`` and sum of every distinct input)."""
    widths = [adapter.shape(adapter.first_module_for_input(k))[0] for k in adapter.input_keys()]
    return sum(8 * (d * d + d) for d in widths)


def memory_needs(adapter: ModelAdapter, samples: int, seq_len: int, batch_size: int,
                 device: torch.device) -> dict[str, int]:
    """Estimated bytes on ``device`` for the in-memory and the streamed path.

    In memory: the model (unless it already lives there), every layer's statistics and one batch's
    activations. Streamed: the largest layer, one layer's statistics, the hidden states of the whole
    calibration set and one batch's activations.
    """
    model = adapter.model
    param = next(model.parameters())
    widths = [adapter.shape(t) for t in adapter.type_names]
    hidden_width = adapter.shape(adapter.first_module_for_input(adapter.input_keys()[0]))[0]
    activations = 4 * batch_size * seq_len * max(max(w) for w in widths) * 4  # a few float32 (batch, seq, width)
    home = torch.device("cpu") if param.device.type == "meta" else param.device  # a skeleton loads onto the host
    resident = home.type == device.type and device.index in (None, home.index)
    model_bytes = 0 if resident else _nbytes(model.parameters())
    layer_bytes = max(_nbytes(layer.parameters()) for layer in adapter.layers)
    hidden_bytes = samples * seq_len * hidden_width * param.element_size()
    return {
        "in_memory": model_bytes + adapter.num_layers * stats_bytes(adapter) + activations,
        "streamed": (0 if resident else layer_bytes) + stats_bytes(adapter) + hidden_bytes + activations,
    }


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def choose_stream(mode: str, adapter: ModelAdapter, samples: int, seq_len: int, batch_size: int,
                  device: torch.device | str) -> bool:
    """Whether to stream (``auto``: when the in-memory path would not fit); prints the choice in one line.

    A path that cannot fit fails here, before the calibration pass, saying what it needs and what helps.
    """
    if mode not in STREAM_MODES:
        raise ValueError(f"--stream must be one of {', '.join(STREAM_MODES)}, got {mode!r}")
    device = torch.device(device)
    needs, free = memory_needs(adapter, samples, seq_len, batch_size, device), free_bytes(device)
    stream = mode == "on" or (mode == "auto" and needs["in_memory"] > AUTO_SHARE * free)
    need = needs["streamed" if stream else "in_memory"]
    where = f"~{need / GIB:.1f} GiB of {free / GIB:.1f} GiB free on {device}"
    if need > free:
        helps = "fewer --calib-samples or a smaller --calib-batch-size" if stream else "--stream on"
        raise WontFitError(f"{'streamed' if stream else 'in-memory'} calibration needs {where}: try {helps}")
    how = "layer-streamed (statistics on disk)" if stream else "in memory"
    print(f"sharvet: calibration {how}: {where} (--stream {mode})", file=sys.stderr)
    return stream


def plan_loading(model: str | None, dtype: torch.dtype, mode: str, samples: int, seq_len: int,
                 batch_size: int, device: torch.device | str) -> tuple[bool | None, dict[str, str] | None]:
    """Before any weight loads: whether calibration streams (:func:`choose_stream` on the model built on the meta
    device from its config) and, if it does and the weights are safetensors in a local folder, the
    ``device_map`` that keeps the decoder layers on disk (:func:`offload_map`). ``(None, None)`` when the config
    cannot be read here (the load reports why) or names no supported architecture."""
    from .loading import meta_model, peek_config, resolve_model_source
    from .models import supported_model_types

    config = peek_config(model)
    if config is None or getattr(config, "model_type", None) not in supported_model_types():
        return None, None
    source, gguf, _ = resolve_model_source(model)
    skeleton = meta_model(config, dtype)
    adapter = adapter_for(skeleton)
    stream = choose_stream(mode, adapter, samples, seq_len, batch_size, device)
    offloadable = gguf is None and any(Path(source).glob("*.safetensors"))
    return stream, offload_map(skeleton, adapter.layers_path) if stream and offloadable else None
