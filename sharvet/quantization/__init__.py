"""Weight-only round-to-nearest quantisation of dense and shared-basis models (paper Table 11)."""
from .layers import QuantizedLinear, QuantizedSharedBasisLinear
from .model import StorageReport, quantize_model, storage_report
from .rtn import QuantizedTensor, pack_codes, rtn_codes, unpack_codes

__all__ = ["QuantizedLinear", "QuantizedSharedBasisLinear", "QuantizedTensor", "StorageReport", "pack_codes",
           "quantize_model", "rtn_codes", "storage_report", "unpack_codes"]
