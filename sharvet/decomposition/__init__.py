"""How a group's original weights become its stored form, one module per group kind.

- :mod:`.svd`: shared low-rank basis (SharVeT, Basis Sharing), plain or activation-whitened SVD;
- :mod:`.mean`: one shared whole matrix (SEQ, CYCLE, CYCLE-REV), the (activation-weighted) mean;
- :mod:`.sparse`: FiPS, shared basis + sparse projections, refined on block-wise reconstruction.
"""
from .mean import shared_matrix
from .svd import GroupFactors, cholesky_with_jitter, decompose_group, group_energies

__all__ = ["GroupFactors", "cholesky_with_jitter", "decompose_group", "group_energies", "shared_matrix"]
