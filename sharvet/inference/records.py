"""Benchmark records: dense and compressed measurements paired per setting, printed and merged into a JSON file."""
from __future__ import annotations

import contextlib
import datetime
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

GIB = 2**30


@dataclass
class Measurement:
    seconds: float
    tokens_per_s: float
    peak_gib: float | None = None
    #: seconds the host took to issue an eager forward (None where CUDA graphs replay it): near ``seconds``, the
    #: measurement is bound by Python and launches, not by the GPU
    host_seconds: float | None = None
    #: decode: each timed window's seconds per step on the device and on the host, in the order they ran
    windows: tuple[float, ...] = ()
    host_windows: tuple[float, ...] = ()
    #: the peak over the timed calls alone, after warm-up, compiling and graph capture (see ``PeakMemory``)
    steady_peak_gib: float | None = None

    @property
    def spread(self) -> float | None:
        """(slowest - fastest) / median of the timed windows behind ``seconds`` (None: not repeated)."""
        return spread(self.windows) if self.windows else None


def spread(times: Sequence[float]) -> float:
    """How far apart repeated timings lie, relative to their median."""
    return (max(times) - min(times)) / statistics.median(times)


@dataclass
class ModelRun:
    """One model's measurements, keyed by (phase, batch, tokens per step)."""

    label: str
    weight_bytes_per_token: int
    stored_gib: float
    rows: dict[tuple[str, int, int], Measurement] = field(default_factory=dict)
    compile_s: float | None = None
    note: str = ""
    #: GiB allocated on the GPU beyond the weights before the first measurement (None off a GPU)
    resident_gib: float | None = None



def git_commit(root: Path = Path(__file__).resolve().parents[2]) -> str | None:
    """The checkout's commit, ``-dirty`` appended when tracked files differ from it: a copy of a working tree (the
    GPU machine's) can carry an older HEAD than the code it runs, and a record must not claim that commit's code."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    with contextlib.suppress(Exception):
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    return None


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
            "transformers": transformers.__version__, "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def gib_beyond(peak: float | None, stored: float) -> float | None:
    return None if peak is None else round(peak - stored, 3)


def excess_mib(dense: float | None, dense_stored: float, compressed: float | None,
               compressed_stored: float) -> float | None:
    """MiB the compressed model's workspace (peak minus its weights) takes beyond dense's: what the memory target
    compares, at a resolution the GiB fields (three decimals, ~1 MiB) do not have."""
    if dense is None or compressed is None:
        return None
    return round(((compressed - compressed_stored) - (dense - dense_stored)) * 1024, 2)


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def round3(x: float | None) -> float | None:
    """Three decimals (GiB fields: ~1 MiB; spreads: 0.1 %); None passes through."""
    return None if x is None else round(x, 3)


round_gib = round3


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else _sig(seconds * 1000)


def _windows(label: str, m: Measurement) -> dict[str, list[float]]:
    """A decode row's per-window step times in ms, device and host (none for other rows)."""
    if not m.windows:
        return {}
    return {f"{label}_windows_ms": [_ms(t) for t in m.windows],
            f"{label}_host_windows_ms": [_ms(t) for t in m.host_windows]}


def records(dense: ModelRun, compressed: ModelRun, *, shape: str, ratio: float, path: str, command: str,
            env: dict[str, Any], extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One record per (phase, batch, tokens per step) both runs measured."""
    bound = dense.weight_bytes_per_token / compressed.weight_bytes_per_token
    out = []
    for key in dense.rows:
        if key not in compressed.rows:
            continue
        d, c = dense.rows[key], compressed.rows[key]
        phase, batch, tokens = key
        out.append({
            "shape": shape, "ratio": ratio, "phase": phase, "path": path, "batch": batch,
            "tokens_per_step": 1 if phase == "decode" else tokens,
            "dense_tokens_per_s": _sig(d.tokens_per_s), "compressed_tokens_per_s": _sig(c.tokens_per_s),
            "speedup": _sig(c.tokens_per_s / d.tokens_per_s), "bound": _sig(bound),
            "dense_ms": _sig(d.seconds * 1000), "compressed_ms": _sig(c.seconds * 1000),
            "dense_host_ms": _ms(d.host_seconds), "compressed_host_ms": _ms(c.host_seconds),
            "dense_spread": round3(d.spread), "compressed_spread": round3(c.spread),
            **_windows("dense", d), **_windows("compressed", c),
            "peak_gpu_gib_dense": round_gib(d.peak_gib), "peak_gpu_gib_compressed": round_gib(c.peak_gib),
            "stored_gib_dense": round(dense.stored_gib, 3), "stored_gib_compressed": round(compressed.stored_gib, 3),
            # peak minus the weights: KV cache, activations, CUDA-graph pools (the target: compressed <= dense)
            "workspace_gib_dense": gib_beyond(d.peak_gib, dense.stored_gib),
            "workspace_gib_compressed": gib_beyond(c.peak_gib, compressed.stored_gib),
            "workspace_excess_mib": excess_mib(d.peak_gib, dense.stored_gib, c.peak_gib, compressed.stored_gib),
            # the same over the timed calls alone (after compiling and capturing): what serving keeps paying
            "steady_peak_gpu_gib_dense": round_gib(d.steady_peak_gib),
            "steady_peak_gpu_gib_compressed": round_gib(c.steady_peak_gib),
            "steady_excess_mib": excess_mib(d.steady_peak_gib, dense.stored_gib, c.steady_peak_gib,
                                            compressed.stored_gib),
            # of which allocated before any forward (left over from building the model, or from an earlier one)
            "resident_gib_dense": round_gib(dense.resident_gib),
            "resident_gib_compressed": round_gib(compressed.resident_gib),
            "weight_bytes_per_token_dense": dense.weight_bytes_per_token,
            "weight_bytes_per_token_compressed": compressed.weight_bytes_per_token,
            "compile_s_dense": dense.compile_s, "compile_s_compressed": compressed.compile_s,
            "inference_form": compressed.note, **(extra or {}), **env, "command": command,
        })
    return out


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _bracketed(mib: float | None) -> str:
    return "" if mib is None else f" ({_mib(mib)})"


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def table(rows: list[dict[str, Any]]) -> str:
    """The records as a Markdown table, the bound beside each speedup, the spread of repeated timings (decode
    windows) beside the throughputs, and the compressed workspace's excess over dense's (whole run, and in brackets
    the timed calls alone)."""
    head = ("| shape | ratio | fuse | phase | batch | tokens/step | dense tok/s | compressed tok/s | spread d / c | "
            "speedup | bound | peak GiB dense | peak GiB compressed | workspace excess MiB (steady) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        excess, steady = r.get("workspace_excess_mib"), r.get("steady_excess_mib")
        lines.append(f"| {r['shape']} | {r['ratio']} | {r.get('fuse', '')} | {r['phase']} | {r['batch']} | "
                     f"{r['tokens_per_step']} | {r['dense_tokens_per_s']:,.0f} | {r['compressed_tokens_per_s']:,.0f} | "
                     f"{_percent(r.get('dense_spread'))} / {_percent(r.get('compressed_spread'))} | "
                     f"{r['speedup']:.2f}x | {r['bound']:.2f}x | {r['peak_gpu_gib_dense']} | "
                     f"{r['peak_gpu_gib_compressed']} | {_mib(excess)}{_bracketed(steady)} |")
    return "\n".join(lines)


def _key(r: dict[str, Any]) -> tuple:
    return tuple(r.get(k) for k in ("shape", "method", "ratio", "fuse", "kernels", "compile_mode",
                                    "prefill_compile_mode", "phase", "path", "batch", "tokens_per_step", "device",
                                    "dtype"))


def write_records(path: str | Path, new: list[dict[str, Any]]) -> Path:
    """Merge into ``path``'s ``records``: a new record replaces one of the same setting, others are kept."""
    path = Path(path)
    old = json.loads(path.read_text())["records"] if path.is_file() else []
    keys = {_key(r) for r in new}
    merged = [r for r in old if _key(r) not in keys] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"records": merged}, indent=1) + "\n")
    return path
