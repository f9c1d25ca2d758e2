"""Evaluation of (compressed) language models."""

from sharvet.evaluation.perplexity import PerplexityResult, evaluation_tokens, perplexity

__all__ = ["PerplexityResult", "evaluation_tokens", "perplexity"]
