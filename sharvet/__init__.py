"""sharvet: similarity-aware cross-layer basis sharing with vector-based tuning for LLM compression."""
from .api import CalibrationSpec, compress_pretrained, load, load_any
from .calibration import CalibrationStats, collect_stats
from .config import CompressionConfig
from .pipeline import CompressionResult, compress, plan_of
from .similarity import SimilarityConfig

__all__ = [
    "CalibrationSpec", "CalibrationStats", "CompressionConfig", "CompressionResult", "SimilarityConfig",
    "collect_stats", "compress", "compress_pretrained", "load", "load_any", "plan_of",
]
__version__ = "0.1.0"
