"""The int4 kernel path (PyTorch's tinygemm; its CPU build here) equals the dequantised matmul to bfloat16."""
from __future__ import annotations

import copy

import pytest
import torch

from sharvet import CompressionConfig, collect_stats, compress
from sharvet.models import adapter_for
from sharvet.quantization import QuantizedTensor, quantize_model
from sharvet.quantization.int4 import Int4Weight, use_int4_kernels
from tiny import tiny_llama, tokens


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows, cols", [(64, 256), (37, 200), (13, 21), (8, 128)])
@pytest.mark.parametrize("group_size", [128, 64])
def test_kernel_equals_dequantised_matmul(rows, cols, group_size, device):
    g = torch.Generator().manual_seed(rows + cols)
    w = QuantizedTensor(torch.randn(rows, cols, generator=g).to(device), 4, group_size)
    x = torch.randn(2, 3, cols, generator=g).to(device)
    reference = x @ w.dequantize().T
    y = Int4Weight(w).linear(x)
    assert y.shape == reference.shape and y.dtype == x.dtype
    assert (y - reference).norm() < 1e-2 * reference.norm()


def test_only_four_bit_weights_take_the_kernel():
    with pytest.raises(ValueError, match="4-bit"):
        Int4Weight(QuantizedTensor(torch.randn(8, 128), 3, 128))


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_in_a_compressed_model_keep_logits_and_sharing(device):
    model = tiny_llama()
    ids = tokens()
    compress(model, collect_stats(adapter_for(model), ids, progress=False), CompressionConfig(ratio=0.75, k=2),
             progress=False)
    model, ids = model.to(device), ids.to(device)
    quantize_model(model, 4)
    reference = model(ids).logits
    fast = copy.deepcopy(model)
    n = use_int4_kernels(fast)
    adapter = adapter_for(fast)
    bases = {id(adapter.get_module(l, "q").basis) for l in range(adapter.num_layers)}
    assert all(isinstance(adapter.get_module(l, "q").basis, Int4Weight) for l in range(adapter.num_layers))
    assert len(bases) < adapter.num_layers  # a shared basis is still one object
    assert n == len({id(m) for m in fast.modules() if isinstance(m, Int4Weight)})
    logits = fast(ids).logits
    assert (logits - reference).norm() < 2e-2 * reference.norm()
