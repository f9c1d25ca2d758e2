"""Fast inference of shared-basis models: the inference form (:mod:`.form`, :mod:`.modules`) and its measurement
(``sharvet bench``: :mod:`.bench` over :mod:`.measure`, :mod:`.shapes`, :mod:`.traffic`, :mod:`.records`)."""
from .form import FUSE_MODES, InferenceReport, prepare

__all__ = ["FUSE_MODES", "InferenceReport", "prepare"]
