"""Partition the L layers of one module type into groups that share a basis.

Strategies are registered by name, so a new one is a decorated function; each returns a list of groups
(lists of layer indices) that covers every layer exactly once.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Groups = list[list[int]]


@dataclass(frozen=True)
class GroupingRequest:
    num_layers: int
    k: int
    similarity: torch.Tensor | None = None
    seed: int = 0


Strategy = Callable[[GroupingRequest], Groups]
STRATEGIES: dict[str, Strategy] = {}
#: strategies that cluster on the similarity matrix (the others ignore it)
SIMILARITY_BASED: set[str] = set()


def register(name: str, *, needs_similarity: bool = False) -> Callable[[Strategy], Strategy]:
    def deco(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        if needs_similarity:
            SIMILARITY_BASED.add(name)
        return fn

    return deco


def canonical(labels: np.ndarray | list[int]) -> Groups:
    """Groups from cluster labels, each sorted, ordered by their first layer."""
    groups: dict[int, list[int]] = {}
    for layer, label in enumerate(labels):
        groups.setdefault(int(label), []).append(layer)
    return sorted(groups.values(), key=lambda g: g[0])


def _affinity(req: GroupingRequest) -> np.ndarray:
    if req.similarity is None:
        raise ValueError("this grouping strategy needs a similarity matrix")
    s = req.similarity.detach().double().cpu().numpy()
    return np.clip((s + s.T) / 2, 0.0, None)


@register("spectral", needs_similarity=True)
def spectral(req: GroupingRequest) -> Groups:
    """SharVeT (Sec. 3.2): spectral clustering on the joint similarity as a precomputed affinity."""
    from sklearn.cluster import SpectralClustering

    if req.k == req.num_layers:
        return [[i] for i in range(req.num_layers)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected" on tiny inputs
        labels = SpectralClustering(
            n_clusters=req.k, affinity="precomputed", random_state=req.seed, assign_labels="kmeans"
        ).fit_predict(_affinity(req))
    return canonical(labels)


@register("spectral-balanced", needs_similarity=True)
def spectral_balanced(req: GroupingRequest) -> Groups:
    """Beyond the paper: SharVeT's spectral clustering with groups of (near-)equal size.

    Spectral clustering's last step (k-means on the spectral embedding) lets group sizes run free, and on
    SmolLM2 it makes several singletons beside groups of 4-7 layers, where the big groups reconstruct worst.
    Here the k-means centroids stay, and the layers are assigned to them exactly, at the least total squared
    distance, under sizes ``floor(L / k)`` or one more (an assignment problem: each centroid offers that many
    slots, ``floor(L / k)`` of them required)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.manifold import spectral_embedding

    n, k = req.num_layers, req.k
    if k == n:
        return [[i] for i in range(n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected" on tiny inputs
        emb = spectral_embedding(_affinity(req), n_components=k, random_state=req.seed, drop_first=False)
    centers = KMeans(k, random_state=req.seed, n_init=10).fit(emb).cluster_centers_
    base, extra = divmod(n, k)
    slots = [(c, True) for c in range(k) for _ in range(base)] + ([(c, False) for c in range(k)] if extra else [])
    cost = ((emb[:, None, :] - centers[[c for c, _ in slots]][None]) ** 2).sum(-1)
    cost -= np.array([1e6 if required else 0.0 for _, required in slots])[None]  # every required slot is filled
    layers, chosen = linear_sum_assignment(cost)
    labels = np.empty(n, dtype=int)
    labels[layers] = [slots[j][0] for j in chosen]
    return canonical(labels)


@register("agglomerative", needs_similarity=True)
def agglomerative(req: GroupingRequest) -> Groups:
    """Table 8 'Agg': Ward linkage on each layer's similarity profile (a row of S)."""
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=req.k, linkage="ward").fit_predict(_affinity(req))
    return canonical(labels)


@register("dbscan", needs_similarity=True)
def dbscan(req: GroupingRequest) -> Groups:
    """Table 8 'DB': DBSCAN on 1 - S; eps is searched so the cluster count comes closest to k.

    DBSCAN has no k; noise points become groups of one. Among eps values giving the same distance to
    k the smallest is kept.
    """
    from sklearn.cluster import DBSCAN

    dist = np.clip(1.0 - _affinity(req), 0.0, None)
    np.fill_diagonal(dist, 0.0)
    best: tuple[int, np.ndarray] | None = None
    for eps in np.unique(dist[np.triu_indices_from(dist, 1)]):
        raw = DBSCAN(eps=float(eps) + 1e-12, min_samples=2, metric="precomputed").fit_predict(dist)
        labels = raw.copy()
        noise = np.flatnonzero(raw < 0)
        labels[noise] = raw.max() + 1 + np.arange(len(noise))
        n = len(set(labels.tolist()))
        if n < req.k:
            break
        if best is None or abs(n - req.k) < best[0]:
            best = (abs(n - req.k), labels)
    return canonical(best[1] if best is not None else np.arange(req.num_layers))


@register("consecutive")
def consecutive(req: GroupingRequest) -> Groups:
    """Basis Sharing / SEQ: k groups of consecutive layers, sizes as equal as possible."""
    return [list(map(int, chunk)) for chunk in np.array_split(np.arange(req.num_layers), req.k)]


@register("cycle")
def cycle(req: GroupingRequest) -> Groups:
    """CYCLE (Takase & Kiyono): layer i uses set i mod k."""
    return canonical([i % req.k for i in range(req.num_layers)])


@register("cycle-rev")
def cycle_rev(req: GroupingRequest) -> Groups:
    """CYCLE (REV) (Takase & Kiyono): cycle up to layer k * (ceil(L / k) - 1), then the sets in reverse.

    E.g. L=6, k=3: sets 0,1,2,2,1,0; L=6, k=4: sets 0,1,2,3,3,2.
    """
    n, k = req.num_layers, req.k
    cycled = k * (math.ceil(n / k) - 1)
    labels = [i % k for i in range(cycled)] + [k - 1 - j for j in range(n - cycled)]
    return canonical(labels)


@register("random")
def random_groups(req: GroupingRequest) -> Groups:
    """Ablation R: a seeded random partition into k groups of (near-)equal size."""
    perm = np.random.default_rng(req.seed).permutation(req.num_layers)
    return [sorted(map(int, chunk)) for chunk in np.array_split(perm, req.k)]


def make_groups(strategy: str, req: GroupingRequest) -> Groups:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown grouping {strategy!r}; choose from {', '.join(sorted(STRATEGIES))}")
    if not 1 <= req.k <= req.num_layers:
        raise ValueError(f"k={req.k} groups is outside 1..{req.num_layers} (the number of layers)")
    groups = STRATEGIES[strategy](req)
    if sorted(i for g in groups for i in g) != list(range(req.num_layers)):
        raise RuntimeError(f"grouping {strategy!r} did not cover every layer exactly once: {groups}")
    return groups


def intra_group_similarity(similarity: torch.Tensor, group: list[int], reduce: str = "mean") -> float | None:
    """Pairwise similarity inside a group (W != W'); None for a group of one."""
    if len(group) < 2:
        return None
    sub = similarity[group][:, group].double()
    off = sub[~torch.eye(len(group), dtype=torch.bool)]
    return float(off.sum() if reduce == "sum" else off.mean())
