"""sharvet.analysis: layer similarities of a model from Python, as the similarity and grouping commands use them."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from sharvet.analysis import model_similarities
from sharvet.api import CalibrationSpec
from sharvet.similarity import SimilarityConfig
from tiny import tiny_llama


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1, "</s>": 2}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]").save_pretrained(folder)
    tiny_llama(4).save_pretrained(folder)
    return folder


def test_structural_similarities_of_the_requested_types(model_dir):
    loaded, adapter, sims = model_similarities(str(model_dir), SimilarityConfig(use_cka=False), CalibrationSpec(),
                                               types=["q", "down"], progress=False)
    assert list(sims) == ["q", "down"] and adapter.num_layers == 4
    joint = sims["q"].joint
    assert joint.shape == (4, 4) and torch.allclose(joint, joint.T) and sims["q"].functional is None
    _, _, default = model_similarities(str(model_dir), SimilarityConfig(use_cka=False), CalibrationSpec(),
                                       default_types=lambda ad: ["up"], progress=False)
    assert list(default) == ["up"]
    with pytest.raises((KeyError, ValueError), match="nope"):
        model_similarities(str(model_dir), SimilarityConfig(use_cka=False), CalibrationSpec(), types=["nope"])
