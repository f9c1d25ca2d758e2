"""fuse="grouped": two grouped Triton launches per layer input for a decode step, the reference otherwise.

The kernels run where Triton is: on a GPU, or on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``, in
a subprocess, since the variable is read when the kernel is defined). CPU-only machines without Triton run the
fallback, which ``test_inference.py`` checks like every other fuse mode."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharvet.inference import prepare
from sharvet.inference.grouped import GroupedSlice

from test_inference import compressed, converted

HERE = Path(__file__).parent
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

INTERPRETED = """
import os
import torch
from sharvet.inference import grouped
assert grouped.AHEAD == (os.environ.get("SHARVET_GROUPED_AHEAD") == "1")  # the variant asked for is the one run
assert grouped.EVICT_FIRST == (os.environ.get("SHARVET_GROUPED_EVICT", "first") == "first")
from test_inference import compressed, converted
model, ids = compressed()
fast = converted(model, "grouped")
gated = [m for m in fast.modules() if isinstance(m, grouped.GroupedGatedMLP)]
assert len(gated) == (len(fast.model.layers) if grouped.GATED_MLP else 0)  # every gated MLP, or none
if grouped.MIN_PROGRAMS:  # the tiny model's short launches had their row blocks halved
    stages = [m for m in fast.modules() if isinstance(m, grouped.GroupedStages)]
    launches = [launch for m in stages for launch in (m.first, m.second)]
    assert any(launch.layouts[False][0] < grouped.TILES[launch.first_stage][0] for launch in launches)
tokens = []  # tokens of every grouped launch
launch = grouped._Launch.__call__
grouped._Launch.__call__ = lambda self, x: tokens.append(x.shape[0]) or launch(self, x)
kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
prompt = ids[:1, :6]
assert torch.equal(fast.generate(prompt, **kw), model.generate(prompt, **kw))
batch = ids[:3, :6]  # three sequences: decode steps of three tokens take the tl.dot path
assert torch.equal(fast.generate(batch, **kw), model.generate(batch, **kw))
# both decodes ran the kernels (and the 6-token prompt: short steps are memory-bound too); 18 tokens did not
assert {1, 3} <= set(tokens) and max(tokens) <= grouped.MAX_TOKENS, set(tokens)
step = ids[:1, :1]
torch.testing.assert_close(fast(step).logits, model(step).logits, atol=2e-4, rtol=1e-4)
if os.environ.get("COMPILE") == "1":  # one variant: compiling on the CPU takes half a minute, the variants add nothing
    with torch.no_grad():  # one graph: the grouped launch is an operator torch.compile keeps whole
        compiled = torch.compile(fast.forward, fullgraph=True)
        torch.testing.assert_close(compiled(input_ids=step).logits, model(step).logits, atol=2e-4, rtol=1e-4)
print("ok", len(tokens))
"""


def test_grouped_modules_replace_every_compressed_module():
    model, ids = compressed()
    fast = converted(model, "grouped")
    slices = [m for m in fast.modules() if isinstance(m, GroupedSlice)]
    groups = {id(m.group) for m in slices}
    assert len(slices) == 7 * 4 and len(groups) == 4 * 4  # q+k+v, o, gate+up, down per layer
    assert fast.sharvet_inference.fused_layers == {"q+k+v": 4, "o": 4, "gate+up": 4, "down": 4}
    from sharvet.inference import grouped  # the record says which kernel settings ran (they come from the env)

    assert fast.sharvet_inference.line().endswith(f"; grouped kernels: {grouped.describe()}")
    first, second = grouped.tile_text(grouped.TILES[True]), grouped.tile_text(grouped.TILES[False])
    tiles = f"tile {first}" if first == second else f"tiles {first} (first stage) / {second} (second)"
    assert grouped.describe().startswith(f"{tiles}, first-stage split")
    torch.testing.assert_close(fast(ids).logits, model(ids).logits, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_gated_mlps_wrap_only_silu_gated_pairs(act, monkeypatch):
    """``SHARVET_GROUPED_GATED=1``: every SiLU-gated MLP whose gate and up are compressed gets the gated launch
    (where the kernels cannot run, it runs as it was: same logits); another activation keeps the plain launches."""
    from sharvet.inference import grouped

    monkeypatch.setattr(grouped, "GATED_MLP", True)
    model, ids = compressed()
    for layer in model.model.layers:
        layer.mlp.act_fn = {"silu": torch.nn.SiLU(), "gelu": torch.nn.GELU()}[act]
    fast = converted(model, "grouped")
    wrapped = [m for m in fast.modules() if isinstance(m, grouped.GroupedGatedMLP)]
    assert len(wrapped) == (4 if act == "silu" else 0) == fast.sharvet_inference.gated_mlps
    assert ("gated (silu(gate) * up in one launch) in 4 layers" in fast.sharvet_inference.line()) == (act == "silu")
    torch.testing.assert_close(fast(ids).logits, model(ids).logits, atol=2e-5, rtol=1e-5)
    assert all(m.mlp.down_proj is m._stages[1] for m in wrapped)
    copied = copy.deepcopy(fast)  # the wrapper's references follow the copy
    assert all(m._stages[0] is m.mlp.gate_proj.group for m in copied.modules()
               if isinstance(m, grouped.GroupedGatedMLP))


def test_offloaded_weights_are_refused():
    model, _ = compressed()
    down = model.model.layers[1].mlp.down_proj
    down.v = torch.nn.Parameter(torch.empty_like(down.v, device="meta"), requires_grad=False)  # as offloading leaves it
    with pytest.raises(ValueError, match="offloaded"):
        prepare(model, fuse="grouped")


def test_pointer_tables_follow_copies_and_moves():
    """The kernels read weights through raw pointers: a copy or a cast must rebuild them, never share stale ones."""
    model, _ = compressed()
    fast = converted(model, "grouped")

    def tables_point_at_own_weights(m) -> bool:
        groups = {id(s.group): s.group for s in m.modules() if isinstance(s, GroupedSlice)}.values()
        return all(g.first.w.tolist() == [p.basis.data_ptr() for p in g.parts]
                   and g.second.w.tolist() == [p.v.data_ptr() for p in g.parts] for g in groups)

    assert tables_point_at_own_weights(fast)
    assert tables_point_at_own_weights(copy.deepcopy(fast))
    assert tables_point_at_own_weights(fast.to(torch.float64))


def _interpreter_works() -> bool:
    """Triton before 3.9 interprets loop bounds loaded from memory as 1-element arrays, which NumPy 2 refuses to turn
    into ints (seen with Triton 3.6 on the H200 image, 2026-11-30; compiled kernels are unaffected)."""
    import triton

    return tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 9)


VARIANTS = ("default", "split", "ahead")


def _variant_env(variant: str) -> dict[str, str]:
    """split: first stages split in 2-4 parts, the second stages take a tile of their own, short launches halve
    their row blocks (to 2 programs per SM, of the 8 the interpreter counts), weights load without the evict-first
    policy (the default has it); split and ahead: gated MLPs' gate and up in one launch (over a split first stage's
    parts, and with weights read ahead), every other module in the plain launches; ahead: weights read a tile
    ahead, as with programmatic dependent launch (whose GPU instructions the interpreter cannot run)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "SHARVET_GROUPED_MAX_TOKENS": "16",  # the tl.dot path too
           "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]), "COMPILE": str(int(variant == "default")),
           "OMP_NUM_THREADS": "1"}  # three at once: one thread each
    if variant == "split":
        env.update(SHARVET_GROUPED_TILES="4x16x4xauto/8x32x4", SHARVET_GROUPED_MIN_PROGRAMS="2",
                   SHARVET_GROUPED_EVICT="normal", SHARVET_GROUPED_GATED="1")
    elif variant == "ahead":  # several column tiles a row
        env.update(SHARVET_GROUPED_AHEAD="1", SHARVET_GROUPED_TILES="4x16x4", SHARVET_GROUPED_GATED="1")
    return env


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """The variants' interpreter runs, started together: each is one mostly single-threaded process (one at a time
    they took ~3 minutes of the suite)."""
    if not _interpreter_works():
        pytest.skip("Triton < 3.9: its interpreter fails on NumPy 2 (the GPU tests cover the compiled kernels)")
    folder = tmp_path_factory.mktemp("interpreted")
    runs = {}
    for variant in VARIANTS:
        out, err = (open(folder / f"{variant}.{kind}", "w+") for kind in ("out", "err"))
        runs[variant] = subprocess.Popen([sys.executable, "-c", INTERPRETED], env=_variant_env(variant),
                                         stdout=out, stderr=err, text=True), out, err
    yield runs
    for process, out, err in runs.values():
        if process.poll() is None:
            process.kill()
        out.close(), err.close()


@needs_triton
@pytest.mark.parametrize("variant", VARIANTS)
def test_kernels_match_the_reference_in_the_interpreter(variant, interpreted):
    """Each variant's kernels give the reference's tokens and logits (see ``_variant_env``)."""
    process, out, err = interpreted[variant]
    returncode = process.wait(timeout=900)
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
    assert returncode == 0 and stdout.startswith("ok"), stderr[-3000:]


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("tokens,gated", [(1, False), (4, False), (1, True), (4, True)])
def test_bf16_decode_on_the_gpu_matches_and_compiles(tokens, gated, monkeypatch):
    from sharvet.inference import grouped

    monkeypatch.setattr(grouped, "MAX_TOKENS", 16)  # several-token steps too (the default is one, as measured)
    monkeypatch.setattr(grouped, "GATED_MLP", gated)
    model, ids = compressed()
    model = model.to("cuda", torch.bfloat16)
    ref = prepare(copy.deepcopy(model), fuse="never")
    fast = prepare(model, fuse="grouped")
    step = ids[:tokens, :1].cuda()
    groups = {id(m.group): m.group for m in fast.modules() if isinstance(m, GroupedSlice)}.values()
    assert all(g.fast(torch.zeros(tokens, 1, g.parts[0].in_features, device="cuda", dtype=torch.bfloat16))
               for g in groups)
    torch.testing.assert_close(fast(step).logits.float(), ref(step).logits.float(), atol=5e-2, rtol=2e-2)
    with torch.no_grad():
        compiled = torch.compile(fast.forward, fullgraph=True, mode="reduce-overhead")
        for _ in range(3):  # warm-up, CUDA-graph recording, replay
            logits = compiled(input_ids=step).logits.float()
    torch.testing.assert_close(logits, ref(step).logits.float(), atol=5e-2, rtol=2e-2)


def test_row_blocks_halve_until_a_launch_has_programs_enough(monkeypatch):
    from sharvet.inference import grouped

    assert grouped.row_block([4096], 8, 132) == 8  # off by default: the tile's rows
    monkeypatch.setattr(grouped, "MIN_PROGRAMS", 4)
    assert grouped.row_block([4096], 8, 132) == 4  # o at 8B shapes: 512 programs < 528, 1,024 with 4 rows
    assert grouped.row_block([14336, 14336], 8, 132) == 8  # gate+up: 3,584 programs already
    assert grouped.row_block([3], 8, 132) == 1  # never below one row


def test_first_stages_split_until_the_gpu_has_programs_enough():
    from sharvet.inference.grouped import PROGRAMS_PER_SM, first_stage_split

    sms = 132  # an H100/H200
    assert first_stage_split(PROGRAMS_PER_SM * sms, 4096, 1024, sms) == 1  # q+k+v at 8B shapes: enough already
    assert first_stage_split(750, 14336, 1024, sms) == 4  # down: few programs, a long reduction
    assert first_stage_split(10, 4096, 1024, sms) == 4  # at most one column tile per part
    assert first_stage_split(10, 1000, 1024, sms) == 1


def test_matmul_benchmark_runs_on_the_cpu(tmp_path):
    """benchmarks/grouped_gemv.py on the tiny shape: dense and cuBLAS rows (grouped rows need a GPU or the
    interpreter), bytes read by the compressed modules below dense's."""
    out = tmp_path / "g.json"
    subprocess.run([sys.executable, str(HERE.parent / "benchmarks" / "grouped_gemv.py"), "--shape", "tiny",
                    "--device", "cpu", "--repeats", "2", "--out", str(out)], check=True, capture_output=True,
                   env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    record = json.loads(out.read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    assert {"dense", "cublas"} <= set(rows) and rows["cublas"]["bytes"] < rows["dense"]["bytes"]
    assert rows["cublas"]["bound"] == round(rows["dense"]["bytes"] / rows["cublas"]["bytes"], 3) > 1
    assert record["kernels"].startswith("tile") and record["commit"] and record["date"]  # the settings it ran


def test_programmatic_dependent_launch_only_on_nvidia_sm90_and_newer(monkeypatch):
    from sharvet.inference import grouped

    monkeypatch.setattr(grouped, "PDL", True)
    monkeypatch.setattr(torch.version, "hip", None)
    for capability, expected in (((9, 0), True), ((10, 0), True), ((8, 9), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d, c=capability: c)
        assert grouped.pdl_on(torch.device("cuda")) is expected
    assert not grouped.pdl_on(torch.device("cpu"))
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm reports e.g. 9.4 for an MI300
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d: (9, 4))
    assert not grouped.pdl_on(torch.device("cuda"))
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(grouped, "PDL", False)  # SHARVET_GROUPED_PDL=0, an old Triton, or the interpreter
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _d: (9, 0))
    assert not grouped.pdl_on(torch.device("cuda"))


def test_tile_sizes_parse_or_fail_in_one_line():
    from sharvet.inference.grouped import parse_tiles

    assert parse_tiles("8x512x4") == (8, 512, 4, 1) and parse_tiles("16X256x8x4") == (16, 256, 8, 4)
    assert parse_tiles("4x1024x4xauto") == (4, 1024, 4, 0)
    from sharvet.inference.grouped import parse_stage_tiles

    assert parse_stage_tiles("8x512x4x2") == {True: (8, 512, 4, 2), False: (8, 512, 4, 1)}  # one tile, both stages
    assert parse_stage_tiles("4x512x4xauto/8x256x8") == {True: (4, 512, 4, 0), False: (8, 256, 8, 1)}
    with pytest.raises(ValueError, match="only the first stage splits"):
        parse_stage_tiles("4x512x4/8x512x4x2")
    for bad in ("8x512", "8x512x4x2x1", "8xKx4", "6x512x4", "8x8x4", "8x512x4x3", "8x512xauto"):
        with pytest.raises(ValueError, match="SHARVET_GROUPED_TILES"):
            parse_tiles(bad)


def _compile_for_hopper(tokens: int, split: int, first: bool, align: int):
    from sharvet.inference import grouped
    from sharvet.inference.grouped_aot import compile_ahead

    weights = [torch.zeros(40, 64, dtype=torch.bfloat16)]
    block_n, block_k, *_ = grouped._Launch(weights, None, [0], first_stage=first).layouts[tokens > 1]
    return compile_ahead(tokens=tokens, split=split, first=first, align=align, block_n=block_n, block_k=block_k,
                         warps=grouped.TILES[first][2])


@needs_triton
@pytest.mark.parametrize("tokens,split,first", [(1, 1, True), (1, 4, True), (1, 1, False), (1, 4, False),
                                                (16, 1, True), (16, 1, False)])  # several tokens never split
def test_kernel_compiles_for_hopper_without_a_gpu_and_keeps_to_registers(tokens, split, first):
    """Triton compiles ahead of time for sm_90 with the ptxas it ships, so the GPU path's code is checked where
    there is no GPU (the interpreter does not compile); at the tile sizes a launch uses for that many tokens,
    nothing spills to local memory (read by Triton's cuobjdump)."""
    from sharvet.inference.grouped_aot import kernel_code

    assert kernel_code(_compile_for_hopper(tokens, split, first, align=8)).spill_bytes == 0


@needs_triton
@pytest.mark.parametrize("first", [True, False])
def test_one_token_kernels_read_weights_in_16_byte_loads_when_aligned(first):
    """Addresses loaded from the pointer tables carry no alignment, so without ``ALIGN`` every bf16 weight is read
    by a 2-byte load (the seventh session's kernels: ~2.0-2.3 TB/s on an H200 against dense's 3.3); with it, only
    16-byte loads (and the tables' 8-byte ones) remain in the PTX."""
    from sharvet.inference.grouped_aot import kernel_code

    aligned, unaligned = (kernel_code(_compile_for_hopper(1, 1, first, align)) for align in (8, 1))
    assert set(aligned.loads) == {16, 8} and aligned.narrow_loads == 0
    assert unaligned.loads[2] > 0


@needs_triton
@pytest.mark.parametrize("tokens", [1, 16])
def test_gated_second_stage_compiles_for_hopper_in_registers_and_wide_loads(tokens):
    """The gated launch (gate's and up's rows, two accumulators, weights read ahead as with PDL) at the second
    stage's tile: nothing spills, and one token's weights are read in 16-byte loads only."""
    from sharvet.inference import grouped
    from sharvet.inference.grouped_aot import compile_ahead, kernel_code

    weights = [torch.zeros(40, 64, dtype=torch.bfloat16)] * 2
    block_n, block_k, *_ = grouped._Launch(weights, None, [0, 64], first_stage=False, gated=True).layouts[tokens > 1]
    code = kernel_code(compile_ahead(tokens=tokens, split=1, first=False, align=8, block_n=block_n, block_k=block_k,
                                     warps=grouped.TILES[False][2], pdl=grouped.gdc_wait is not None, gated=True))
    assert code.spill_bytes == 0
    assert tokens > 1 or (set(code.loads) == {16, 8} and code.narrow_loads == 0)


@needs_triton
def test_weights_can_be_read_with_l2_evict_first():
    """``SHARVET_GROUPED_EVICT``: with ``first`` (the default) the weight loads carry the evict-first policy, with
    ``normal`` none does."""
    from sharvet.inference.grouped_aot import compile_ahead

    for evict in (False, True):
        ptx = compile_ahead(tokens=1, split=1, first=True, align=8, block_n=2, block_k=1024, warps=4,
                            evict_first=evict).asm["ptx"]
        assert ("evict_first" in ptx) == evict


def test_load_widths_are_read_from_ptx_names():
    from sharvet.inference.grouped_aot import load_bytes

    assert [load_bytes(i) for i in ("ld.global.b16", "ld.global.v4.b32", "ld.global.L1::evict_last.b64",
                                    "ld.global.nc.v2.f32")] == [2, 16, 8, 8]


def test_alignment_is_claimed_only_when_every_row_address_and_offset_allows_it():
    from sharvet.inference.grouped import alignment

    w = torch.zeros(40, 64, dtype=torch.bfloat16)
    assert alignment([w, w[8:]], None, [0, 64]) == 8  # rows of 64 bf16: 128 bytes each
    assert alignment([w], [torch.ones(64, dtype=torch.bfloat16)], [0]) == 8
    assert alignment([w.view(-1)[4:4 + 40 * 60].view(40, 60)], None, [0]) == 1  # starts 8 bytes in, rows of 60
    assert alignment([w], None, [4]) == 1  # an input offset of half a vector
    assert alignment([torch.zeros(8, 64)], None, [0]) == 4  # float32: four to 16 bytes


@needs_triton
def test_the_code_table_reports_each_tile_and_stage():
    """benchmarks/grouped_code.py: resident programs by registers, and one row per tile and stage."""
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    import grouped_code

    assert grouped_code.programs_per_sm(63, 4) == 8  # 2,048 registers a warp
    assert grouped_code.programs_per_sm(120, 4) == 4
    assert grouped_code.programs_per_sm(16, 1) == 32  # the program limit
    (first, second) = grouped_code.rows(["4x512x4"], align=8)
    assert (first["stage"], second["stage"]) == ("first", "second")
    assert first["narrow_loads"] == 0 and first["spill_bytes"] == 0 and first["programs_per_sm"] >= 8


@needs_triton
def test_programmatic_dependent_launch_is_on_by_default_where_it_exists():
    """Programmatic dependent launch: with it the kernel holds the grid dependency instructions and the launch flag,
    without it neither. It is allowed by default (``auto``) and with ``1``, off with ``0``, never in the
    interpreter, and taken only by launches on sm_90+ GPUs (never on the CPU)."""
    from sharvet.inference import grouped
    from sharvet.inference.grouped_aot import compile_ahead

    if grouped.gdc_wait is None:
        pytest.skip("this Triton has no grid dependency control")
    for pdl in (False, True):
        kernel = compile_ahead(tokens=1, split=1, first=False, align=8, block_n=4, block_k=1024, warps=4, pdl=pdl)
        assert ("griddepcontrol.wait" in kernel.asm["ptx"]) == pdl == bool(kernel.metadata.launch_pdl)
    code = ("import os, torch; os.environ.pop('SHARVET_GROUPED_PDL', None); {} os.environ['TRITON_INTERPRET'] = '{}';"
            "from sharvet.inference import grouped; print(grouped.PDL, grouped.pdl_on(torch.device('cpu')), "
            "grouped.describe())")
    run = lambda env, interpret: subprocess.run([sys.executable, "-c", code.format(env, interpret)],  # noqa: E731
                                                capture_output=True, text=True, check=True).stdout
    default, on, off, interpreted = (run("", "0"), run("os.environ['SHARVET_GROUPED_PDL'] = '1';", "0"),
                                     run("os.environ['SHARVET_GROUPED_PDL'] = '0';", "0"), run("", "1"))
    assert default.startswith("True False") and "programmatic dependent launch" in default
    assert on.startswith("True False")
    assert off.startswith("False") and "programmatic" not in off
    assert interpreted.startswith("False")
