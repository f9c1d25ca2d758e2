"""Figures: the shared matplotlib set-up and per-module-type similarity heatmaps (the paper's Figure 1)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .similarity import TypeSimilarity


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend: servers and CI have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (creating its folder) and close a figure; returns where it went."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def similarity_heatmaps(sims: dict[str, TypeSimilarity], path: str | Path, *, which: str = "joint",
                        title: str = "") -> Path:
    """One heatmap per module type of the chosen matrix (joint, structural or functional)."""
    plt = pyplot()
    cols = min(4, len(sims))
    rows = math.ceil(len(sims) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat[len(sims):]:
        ax.axis("off")
    for ax, (name, sim) in zip(axes.flat, sims.items()):
        mat: torch.Tensor | None = getattr(sim, which)
        if mat is None:
            ax.set_title(f"{name}: {which} off")
            ax.axis("off")
            continue
        im = ax.imshow(mat.numpy(), cmap="viridis", vmin=float(mat.min()), vmax=1.0, origin="upper")
        ax.set_title(name)
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title or f"cross-layer {which} similarity")
    return save_figure(fig, path)
