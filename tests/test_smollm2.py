"""The real SmolLM2-135M (bundled GGUF): compress at 0.8, save, reload, perplexity stays sane."""
from __future__ import annotations

import math

import pytest
import torch

from sharvet import CalibrationSpec, CompressionConfig, compress_pretrained, load
from sharvet.evaluation.perplexity import evaluation_tokens, perplexity
from sharvet.loading import bundled_model_file

pytestmark = pytest.mark.slow

#: measured 2026-11-22 on the 2-core CI-class CPU with exactly these settings: see docs/results.md
PPL_BOUND = 200.0
EVAL_TOKENS = 4096


@pytest.fixture(scope="module")
def bundled():
    try:
        return bundled_model_file()
    except FileNotFoundError as e:
        pytest.fail(str(e))


def test_compress_reload_perplexity(bundled, shared_data_dir, tmp_path):
    cfg = CompressionConfig(ratio=0.8)
    calib = CalibrationSpec(samples=8, seq_len=256, data_dir=str(shared_data_dir), cache_dir=None)
    model, result, loaded = compress_pretrained(None, cfg, calibration=calib, output=tmp_path / "smol", progress=False)
    report = result.report
    assert 0.795 <= report.linear_ratio <= 0.8
    assert report.model_ratio < 0.87
    reloaded = load(tmp_path / "smol")
    ids = evaluation_tokens("wikitext2", loaded.tokenizer, shared_data_dir)[:EVAL_TOKENS]
    with torch.inference_mode():
        assert torch.equal(reloaded(ids[None, :128]).logits, model(ids[None, :128]).logits)
    ppl = perplexity(reloaded, ids, context=1024, progress=False).ppl
    print(f"SmolLM2-135M ratio 0.8 ppl on the first {EVAL_TOKENS} WikiText-2 test tokens: {ppl:.2f}")
    assert math.isfinite(ppl) and ppl < PPL_BOUND
