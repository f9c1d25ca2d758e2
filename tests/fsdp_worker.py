"""One process of tests/test_scale_fsdp.py (run under torchrun): refine a tiny compressed model, save the result."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))

from sharvet import CompressionConfig, compress  # noqa: E402
from sharvet.calibration import collect_stats  # noqa: E402
from sharvet.models import adapter_for  # noqa: E402
from sharvet.refinement import RefineConfig, refine  # noqa: E402
from tiny import tiny_llama, tokens  # noqa: E402


def main(out: str, mode: str) -> None:
    """``mode``: fsdp or ddp (under torchrun, 2 sequences a process and step), or single (one process, 4)."""
    teacher = tiny_llama(4)
    student = copy.deepcopy(teacher)
    ids = tokens(8, 32)
    compress(student, collect_stats(adapter_for(student), ids, batch_size=4, progress=False),
             CompressionConfig(ratio=0.6, k=2), progress=False)
    # align=1: ranks as planned in every mode (FSDP never pads them; that padding is exact is tested on its own in
    # test_refinement.py), so the modes are compared on the same matmul shapes
    cfg = RefineConfig(batch_size=4 if mode == "single" else 2, epochs=1, cpu=True, fsdp=mode == "fsdp",
                       gradient_checkpointing=True, progress=False, output_dir=str(Path(out) / "run"), align=1)
    result = refine(student, teacher, ids, cfg)
    if result.main_process:
        model = result.model
        assert not any("FullyShardedDataParallel" in type(m).__name__ for m in model.modules())
        with torch.no_grad():
            logits = model(tokens(2, 16, seed=1)).logits
        state = {k: v.contiguous() for k, v in model.state_dict().items() if "scale" in k or "sigma" in k}
        save_file({**state, "logits": logits.contiguous()}, str(Path(out) / "result.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
