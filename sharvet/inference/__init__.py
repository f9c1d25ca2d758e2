"""Fast inference of shared-basis models: the inference form (:mod:`.form`) and its measurement (:mod:`.bench`)."""
from .form import FUSE_MODES, InferenceReport, prepare

__all__ = ["FUSE_MODES", "InferenceReport", "prepare"]
