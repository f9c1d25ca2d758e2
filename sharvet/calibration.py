"""One teacher pass over the calibration set accumulating input statistics of every linear module.

Per layer and per *distinct* module input (q/k/v read one tensor, gate/up another) we keep the
second moment ``X^T X``, the input sum and the token count, in float64 on the compute device. That is
all whitened SVD (needs ``X^T X``) and CKA (needs the centred covariance) require, so activations are
never stored. Each batch's product is taken in float32 (float32 matmuls are 2x faster than float64 on CPU;
half-precision inputs on a GPU go through the tensor cores with float32 results) and *accumulated* in float64, where rounding across many batches would hurt; the
input sum is float64 throughout. On a CPU the ``X^T X`` products cost about as much as the teacher
forward itself; being symmetric, only the column panels on and right of the diagonal are multiplied
(``accumulate_gram``), which makes them ~40% cheaper.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .models import ModelAdapter
from .outputs import save_whole

#: target width of the column panels of ``X^T X``; narrower panels skip more of the lower triangle but
#: make smaller matmuls (256 was the fastest for widths 576 and 1536 on a 2-core AVX2 CPU)
PANEL_WIDTH = 256
#: tokens per float64 column sum: over a whole 4 x 1024-token batch of a 1536-wide input, torch's CPU
#: reduction takes a path ~5x slower than summing 512-token chunks (same float64 result)
SUM_CHUNK = 512
#: sequences per teacher forward: on a 2-core CPU 2 x 1024 tokens beat 4 x 1024 (5:13 vs 5:31 for a whole
#: SmolLM2 compression), smaller batches keep activations cache-resident; GPUs are fast either way
DEFAULT_BATCH_SIZE = 2


def panels(d: int) -> list[tuple[int, int]]:
    """Column ranges of ``X^T X``'s panels: outside the diagonal blocks, entries are exact mirrors."""
    count = -(-d // PANEL_WIDTH)
    width = -(-d // count)
    return [(start, min(start + width, d)) for start in range(0, d, width)]


def accumulate_gram(acc: torch.Tensor, x: torch.Tensor) -> None:
    """``acc += x^T x`` computing only the panels on and right of the diagonal (about half the flops).

    Each panel's off-diagonal part is added on both sides of the diagonal from the same values, so the
    result is as symmetric as one full ``x^T x`` matmul (only the diagonal blocks carry matmul rounding).
    """
    d = x.shape[1]
    for start, stop in panels(d):
        block = _gram_block(x[:, start:stop].T, x[:, start:])  # (panel, d - start)
        acc[start:stop, start:] += block
        if stop < d:
            acc[stop:, start:stop] += block[:, stop - start:].T


#: whether this torch multiplies half-precision inputs into float32 results (``torch.mm(..., out_dtype=)``)
_HALF_MM = True


def _gram_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32. Half-precision inputs on a GPU are multiplied by the tensor cores with float32
    accumulation and output (``out_dtype``): each product of two bf16/fp16 numbers is exact in float32, so this
    is the float32 matmul of the same values up to summation order, several times faster (at 8B, the ``X^T X``
    products were most of the streamed calibration's 125 s on an H200). Elsewhere the inputs are cast first."""
    global _HALF_MM
    if a.dtype in (torch.float16, torch.bfloat16):
        if a.is_cuda and _HALF_MM:
            try:
                return torch.mm(a, b, out_dtype=torch.float32)
            except (TypeError, RuntimeError):  # a torch without mm's out_dtype: the same values, cast first
                _HALF_MM = False
        a, b = a.float(), b.float()
    return a @ b


@dataclass
class InputStats:
    """Running statistics of one module input."""

    xtx: torch.Tensor  # (d, d) float64, sum over tokens of x x^T
    total: torch.Tensor  # (d,) float64, sum over tokens of x
    count: int = 0

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    @property
    def second_moment(self) -> torch.Tensor:
        """E[x x^T]."""
        return self.xtx / max(self.count, 1)

    def covariance(self) -> torch.Tensor:
        mu = self.mean
        return self.second_moment - torch.outer(mu, mu)

    def update(self, x: torch.Tensor) -> None:
        """Add the tokens of ``x`` (..., d); half-precision inputs are multiplied with float32 results."""
        x = x.detach().reshape(-1, x.shape[-1])
        accumulate_gram(self.xtx, x)
        for chunk in x.split(SUM_CHUNK):
            self.total += chunk.sum(0, dtype=torch.float64)
        self.count += x.shape[0]


@dataclass
class CalibrationStats:
    """Statistics for every (layer, input key); ``stats[layer][key]``."""

    stats: list[dict[str, InputStats]] = field(default_factory=list)

    def get(self, layer: int, input_key: str) -> InputStats:
        return self.stats[layer][input_key]

    @property
    def num_layers(self) -> int:
        return len(self.stats)

    def save(self, path: str | Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for layer, per_key in enumerate(self.stats):
            for key, s in per_key.items():
                tensors[f"{layer}.{key}.xtx"] = s.xtx.cpu().contiguous()
                tensors[f"{layer}.{key}.total"] = s.total.cpu().contiguous()
                tensors[f"{layer}.{key}.count"] = torch.tensor([s.count], dtype=torch.int64)
        save_whole(tensors, path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "CalibrationStats":
        tensors = load_file(str(path), device=str(device))
        layers: dict[int, dict[str, InputStats]] = {}
        for name in tensors:
            layer, key, kind = name.split(".")
            if kind != "xtx":
                continue
            layers.setdefault(int(layer), {})[key] = InputStats(
                xtx=tensors[name],
                total=tensors[f"{layer}.{key}.total"],
                count=int(tensors[f"{layer}.{key}.count"].item()),
            )
        return cls([layers[i] for i in range(len(layers))])


def cache_key(model_id: str, input_ids: torch.Tensor, extra: str = "") -> str:
    """Key a statistics file by model, exact calibration tokens and settings."""
    h = hashlib.sha256()
    h.update(model_id.encode())
    h.update(extra.encode())
    h.update(input_ids.cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def empty_layer_stats(adapter: ModelAdapter, device: torch.device | str,
                      accumulate: torch.dtype = torch.float64) -> dict[str, InputStats]:
    """Zeroed statistics of one layer's distinct module inputs (``X^T X`` summed in ``accumulate``)."""
    per_key = {}
    for key in adapter.input_keys():
        d_in, _ = adapter.shape(adapter.first_module_for_input(key))
        per_key[key] = InputStats(xtx=torch.zeros(d_in, d_in, dtype=accumulate, device=device),
                                  total=torch.zeros(d_in, dtype=torch.float64, device=device))
    return per_key


def hook_layer(adapter: ModelAdapter, layer: int, per_key: dict[str, InputStats]) -> list:
    """Forward pre-hooks adding each module input of ``layer`` to its statistics; returns the handles."""
    handles = []
    for key, s in per_key.items():
        module = adapter.get_module(layer, adapter.first_module_for_input(key))
        handles.append(module.register_forward_pre_hook(lambda _m, args, s=s: s.update(args[0])))
    return handles


def collect_stats(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    progress: bool = True,
    accumulate: torch.dtype = torch.float64,
) -> CalibrationStats:
    """Run the decoder stack over ``input_ids`` (N, L) with hooks on one module per distinct input.

    The statistics are allocated before entering ``inference_mode`` so they stay ordinary tensors.
    ``accumulate`` is the dtype ``X^T X`` is summed in (float32 halves it; ``benchmarks/scale_precision.py``).
    """
    model = adapter.model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    stats = [empty_layer_stats(adapter, device, accumulate) for _ in range(adapter.num_layers)]
    handles = [h for layer, per_key in enumerate(stats) for h in hook_layer(adapter, layer, per_key)]
    was_training = model.training
    model.eval()
    try:
        base = adapter.base_model
        batches = input_ids.split(batch_size)
        with torch.inference_mode():
            for batch in tqdm(batches, desc="calibration", unit="batch", disable=not progress):
                base(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return CalibrationStats(stats)


def collect_or_load(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    *,
    model_id: str,
    cache_dir: str | Path | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> CalibrationStats:
    """Statistics from the safetensors cache when the same model, tokens and settings were seen."""
    if cache_dir is None:
        return collect_stats(adapter, input_ids, batch_size=batch_size, device=device, progress=progress)
    dtype = str(next(adapter.model.parameters()).dtype)
    path = Path(cache_dir) / f"calib-{cache_key(model_id, input_ids, dtype)}.safetensors"
    if path.exists():
        return CalibrationStats.load(path, device=device or "cpu")
    stats = collect_stats(adapter, input_ids, batch_size=batch_size, device=device, progress=progress)
    stats.save(path)
    return stats
