"""``sharvet bench`` on the CPU: tiny shapes and a tiny checkpoint, valid records merged into one JSON file."""
from __future__ import annotations

import functools
import json
import types

import pytest
import torch

from sharvet.cli import main

REQUIRED = ("shape", "ratio", "batch", "tokens_per_step", "dense_tokens_per_s", "compressed_tokens_per_s", "speedup",
            "bound", "peak_gpu_gib_dense", "peak_gpu_gib_compressed", "command")
SMALL = ["--batches", "1,2", "--prefill-len", "8", "--decode-prompt", "4", "--decode-steps", "4", "--warmup", "1",
         "--repeats", "1"]


def check(rows):
    for r in rows:
        assert all(k in r for k in REQUIRED), sorted(set(REQUIRED) - set(r))
        assert r["dense_tokens_per_s"] > 0 and r["compressed_tokens_per_s"] > 0
        assert r["speedup"] == pytest.approx(r["compressed_tokens_per_s"] / r["dense_tokens_per_s"], rel=1e-2)
        assert r["peak_gpu_gib_dense"] is None  # the CPU has no GPU peak to report
        assert r["bound"] == pytest.approx(r["weight_bytes_per_token_dense"] / r["weight_bytes_per_token_compressed"],
                                           rel=1e-3)


def test_bench_tiny_shape_writes_records_and_merges(tmp_path, capsys):
    out = tmp_path / "summary.json"
    args = ["bench", "--shape", "tiny", "--ratios", "0.5,0.5:always", "--throughput", "4x8", "--device", "cpu",
            "--out", str(out), *SMALL]
    assert main(args) == 0
    rows = json.loads(out.read_text())["records"]
    check(rows)
    # per variant: prefill and decode at each batch, one throughput row
    assert len(rows) == 2 * (2 * 2 + 1)
    assert {(r["phase"], r["batch"], r["tokens_per_step"]) for r in rows} == {
        ("prefill", 1, 8), ("prefill", 2, 8), ("decode", 1, 1), ("decode", 2, 1), ("throughput", 4, 8)}
    assert {r["fuse"] for r in rows} == {"auto", "always"}
    assert all(1 < r["bound"] < 3 for r in rows)  # ratio 0.5 of the linear layers, the LM head unchanged
    # eager forwards say how long the host took to issue them (bound by launches when close to their time)
    eager = [r for r in rows if r["phase"] != "decode"]
    assert all(0 < r["dense_host_ms"] and 0 < r["compressed_host_ms"] for r in eager)
    assert all(r["dense_host_ms"] is None for r in rows if r["phase"] == "decode")
    assert all(r["resident_gib_dense"] is None and r["resident_gib_compressed"] is None for r in rows)  # no GPU
    printed = capsys.readouterr().out
    assert "| spread d / c | speedup | bound |" in printed
    decode = [r for r in rows if r["phase"] == "decode"]  # five timed windows each: a spread, the others none
    assert all(r["dense_spread"] >= 0 and r["compressed_spread"] >= 0 for r in decode)
    assert all(r["dense_spread"] is None for r in rows if r["phase"] != "decode")
    # and each window's step time, device and host, so a spread can be read (one slow window, or host-bound ones)
    assert all(len(r[f"{m}_windows_ms"]) == len(r[f"{m}_host_windows_ms"]) == 5 and min(r[f"{m}_windows_ms"]) > 0
               for r in decode for m in ("dense", "compressed"))
    assert all("dense_windows_ms" not in r for r in rows if r["phase"] != "decode")
    assert all(r["workspace_excess_mib"] is None and r["steady_excess_mib"] is None for r in rows)  # no GPU
    assert main(args) == 0  # the same settings again replace their records
    assert len(json.loads(out.read_text())["records"]) == len(rows)
    # Basis Sharing's plan: alike groups for every type, so the first stages stack without copies
    assert main([*args, "--method", "basis-sharing", "--ratios", "0.5"]) == 0
    rows = json.loads(out.read_text())["records"]
    stacked = [r for r in rows if r["method"] == "basis-sharing"]
    assert len(rows) == 15 and len(stacked) == 5
    assert all("q+k+v in 4 layers" in r["inference_form"] and "+0 parameters" in r["inference_form"] for r in stacked)


def test_gpu_only_prefill_flags_say_in_one_line_that_they_are_ignored_here(tmp_path, capsys):
    from sharvet.cli import main

    assert main(["bench", "--shape", "tiny", "--ratios", "0.5", "--batches", "1", "--prefill-len", "8",
                 "--decode-steps", "2", "--decode-windows", "1", "--throughput", "none", "--compile-prefill",
                 "--prefill-graph", "--device", "cpu", "--out", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert "--compile-prefill ignored: it needs a GPU and compiling on" in err
    assert "--prefill-graph ignored: it needs a GPU" in err
    records = json.loads((tmp_path / "b.json").read_text())["records"]
    assert {r["prefill_compile_mode"] for r in records} == {None}


def test_bench_records_carry_the_kernel_settings_and_a_note(tmp_path, monkeypatch):
    """The grouped kernels' environment settings lead the recorded command (it reruns as measured), and --note
    lands in every record."""
    out = tmp_path / "summary.json"
    monkeypatch.setenv("SHARVET_GROUPED_TILES", "4x512x4/8x512x4")
    monkeypatch.setenv("SHARVET_PREFILL_CHUNK", "1024")
    monkeypatch.setattr("sys.argv", ["benchmarks/inference.py", "--shape", "tiny"])
    args = ["bench", "--shape", "tiny", "--ratios", "0.5", "--throughput", "none", "--device", "cpu", "--out", str(out),
            "--note", "GPU 1 idle", *SMALL]
    assert main(args) == 0
    rows = json.loads(out.read_text())["records"]
    assert rows and all(r["note"] == "GPU 1 idle" for r in rows)
    assert all(r["command"].startswith("SHARVET_GROUPED_TILES=4x512x4/8x512x4 SHARVET_PREFILL_CHUNK=1024 "
                                       "python benchmarks/inference.py") for r in rows)


def test_bench_checkpoint_against_its_original(model_dir, data_dir, tmp_path):
    ck = tmp_path / "ck"
    assert main(["compress", str(model_dir), "-o", str(ck), "--ratio", "0.5", "--k", "2", "--data-dir", str(data_dir),
                 "--calib-samples", "2", "--calib-seq-len", "16", "--cache-dir", "none", "--no-progress",
                 "--device", "cpu"]) == 0
    out = tmp_path / "summary.json"
    assert main(["bench", str(ck), "--original", str(model_dir), "--device", "cpu", "--out", str(out), *SMALL]) == 0
    rows = json.loads(out.read_text())["records"]
    check(rows)
    assert {(r["phase"], r["batch"]) for r in rows} == {("ttft", 1), ("ttft", 2), ("decode", 1), ("decode", 2)}
    assert all(r["path"] == "generate" and r["ratio"] == 0.5 for r in rows)


@pytest.mark.parametrize("args, message", [
    (["bench"], "give a checkpoint folder, --shape, or both"),
    (["bench", "--shape", "gpt9"], "unknown --shape"),
    (["bench", "--shape", "tiny", "--ratios", "0.5:sometimes"], "RATIO[:FUSE]"),
    (["bench", "--shape", "tiny", "--throughput", "512"], "BATCHxTOKENS"),
])
def test_bench_bad_arguments_fail_in_one_line(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_compiled_decode_steps_match_eager_across_batch_sizes():
    """The decode loop traced whole (no graph break) by torch.compile, on the inference form, as on a GPU."""
    import torch

    from sharvet.inference import prepare
    from sharvet.inference.measure import BenchSettings, StepRunner
    from sharvet.inference.shapes import compressed_random, plan_for, random_model, shape_config

    device = torch.device("cpu")
    config = shape_config("tiny")
    plan = plan_for(random_model(config, torch.float32, device, 0), 0.5, device)
    model = prepare(compressed_random(config, plan, torch.float32, device, 0), fuse="always")
    settings = BenchSettings(decode_prompt=4, decode_steps=3, warmup=1)
    torch._dynamo.reset()
    runners = [StepRunner(model, settings, device),
               StepRunner(model, settings, device, lambda f: torch.compile(f, backend="eager", fullgraph=True))]
    with torch.no_grad():
        for batch in (1, 3):
            timing = runners[1].decode(batch)
            assert timing.seconds_per_step > 0 and timing.warmup_seconds > 0 and timing.spread >= 0
            tokens = []
            for runner in runners:
                torch.manual_seed(0)
                prompt = torch.randint(100, config.vocab_size, (batch, 4))
                tokens.append(runner.greedy(prompt, 5))
            assert torch.equal(tokens[0], tokens[1])


def test_decode_step_compiles_in_the_chosen_mode_on_gpus(monkeypatch):
    """--compile-mode reaches torch.compile of the decode step (on a GPU; the CPU stays eager) and the records."""
    import torch

    from sharvet.inference import bench
    from sharvet.inference.measure import BenchSettings, StepRunner
    from sharvet.inference.shapes import random_model, shape_config

    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: (modes.append((mode, dynamic)), fn)[1])
    model = random_model(shape_config("tiny"), torch.float32, torch.device("cpu"), 0)
    settings = BenchSettings(compile_mode="max-autotune")
    StepRunner(model, settings, torch.device("cuda"))  # wrapping touches no device
    StepRunner(model, settings, torch.device("cpu"))
    assert modes == [("max-autotune", False)]  # specialised per batch size
    assert bench._mode(settings, torch.device("cuda")) == "max-autotune"
    assert bench._mode(settings, torch.device("cpu")) is None
    assert bench._mode(BenchSettings(compile=False), torch.device("cuda")) is None
    # the default records its own CUDA graph per step: compiled without torch.compile's graphs
    default = BenchSettings()
    StepRunner(model, default, torch.device("cuda"))
    assert modes[-1] == ("default", False) and default.captures(torch.device("cuda"))
    assert not default.captures(torch.device("cpu")) and not settings.captures(torch.device("cuda"))


def test_records_of_other_kernel_settings_are_added_not_replaced(tmp_path):
    """Records name the grouped kernels' settings (they come from the environment) and merge by them: a run with
    other tiles must not overwrite the default tiles' records in the summary."""
    from sharvet.inference import bench, grouped
    from sharvet.inference.form import prepare
    from sharvet.inference.records import write_records
    from sharvet.inference.shapes import compressed_random, plan_for, random_model, shape_config

    cpu, config = torch.device("cpu"), shape_config("tiny")
    plan = plan_for(random_model(config, torch.float32, cpu, 0), 0.5, cpu)
    assert bench._kernels(prepare(compressed_random(config, plan, torch.float32, cpu, 0), fuse="grouped")) \
        == grouped.describe()
    assert bench._kernels(prepare(compressed_random(config, plan, torch.float32, cpu, 0), fuse="auto")) is None
    record = {"shape": "tiny", "ratio": 0.5, "fuse": "grouped", "phase": "decode", "batch": 1, "speedup": 1.0}
    out = write_records(tmp_path / "s.json", [{**record, "kernels": "tile 8x512x4"}])
    write_records(out, [{**record, "kernels": "tiles 2x1024x4 (first stage) / 8x512x4 (second)"}])
    assert len(json.loads(out.read_text())["records"]) == 2
    write_records(out, [{**record, "kernels": "tile 8x512x4", "speedup": 1.1}])  # the same settings: replaced
    assert sorted(r["speedup"] for r in json.loads(out.read_text())["records"]) == [1.0, 1.1]


def test_inductor_pdl_is_set_as_asked_and_recorded(monkeypatch):
    """--inductor-pdl sets inductor's PDL for the process (dense and compressed alike), and the records' compile
    modes say it (+pdl); unset, inductor's own setting stands; a torch without it fails in one line if asked."""
    import torch._inductor.config as inductor_config

    from sharvet.inference import bench
    from sharvet.inference.measure import BenchSettings

    if not hasattr(inductor_config.triton, "enable_pdl"):
        pytest.skip("this torch's inductor has no PDL setting")
    monkeypatch.setattr(inductor_config.triton, "enable_pdl", False)
    cuda = torch.device("cuda")
    assert bench._mode(BenchSettings(), cuda) == "cuda-graph"  # inductor's setting (off) stands
    asked = BenchSettings(inductor_pdl=True, compile_prefill=True)
    assert bench._mode(asked, cuda) == "cuda-graph+pdl" and inductor_config.triton.enable_pdl
    assert bench._prefill_mode(asked, cuda) == "default+pdl"
    assert bench._mode(BenchSettings(), cuda) == "cuda-graph+pdl"  # on for the process, as recorded
    assert bench._mode(BenchSettings(inductor_pdl=False), cuda) == "cuda-graph"
    monkeypatch.delattr(inductor_config.triton, "enable_pdl")
    with pytest.raises(ValueError, match="no programmatic dependent launch"):
        BenchSettings(inductor_pdl=True).apply_inductor_pdl()
    assert not BenchSettings().apply_inductor_pdl()


def test_prefill_compiles_only_when_asked_and_on_gpus(monkeypatch):
    """--compile-prefill: prefill and throughput forwards go through their own torch.compile (no CUDA graphs),
    on a GPU only; the records say so, and records of either kind do not replace each other."""
    from sharvet.inference import bench
    from sharvet.inference.measure import BenchSettings, PeakMemory, StepRunner
    from sharvet.inference.records import _key
    from sharvet.inference.shapes import random_model, shape_config

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: (compiled.append(fn.__name__), fn)[1])
    model = random_model(shape_config("tiny"), torch.float32, torch.device("cpu"), 0)
    eager, asked = BenchSettings(), BenchSettings(compile_prefill=True)
    StepRunner(model, eager, torch.device("cuda"))
    assert compiled == ["_step"]  # the decode step only
    compiled.clear()
    runner = StepRunner(model, asked, torch.device("cuda"))
    assert compiled == ["_step", "_prefill"]
    calls = []
    runner.prefill_step = lambda ids, cache, pos: calls.append(ids.shape) or runner._prefill(ids, cache, pos)
    runner.device = torch.device("cpu")  # time it here: only the wrapping above needed the GPU's name
    runner.memory = PeakMemory(runner.device)
    runner.prefill(1, 4)
    assert calls == [(1, 4)] * (1 + asked.repeats)
    compiled.clear()
    StepRunner(model, asked, torch.device("cpu"))
    assert compiled == []
    assert bench._prefill_mode(asked, torch.device("cuda")) == "default"
    assert bench._prefill_mode(eager, torch.device("cuda")) is None
    assert bench._prefill_mode(asked, torch.device("cpu")) is None
    assert _key({"prefill_compile_mode": "default"}) != _key({"prefill_compile_mode": None})


def test_decode_profile_runs_the_steps_without_autograd(tmp_path, monkeypatch):
    """benchmarks/decode_profile.py times the steps as sharvet bench does, under no_grad: compiled with autograd
    on, the grouped kernels' operator (no backward) failed on the GPU (2026-11-30)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import decode_profile
    from sharvet.inference.measure import StepRunner

    grad = []
    decode = StepRunner.decode
    monkeypatch.setattr(StepRunner, "decode", lambda self, *a, **k: grad.append(torch.is_grad_enabled())
                        or decode(self, *a, **k))
    out = tmp_path / "profile.json"
    monkeypatch.setattr(sys, "argv", ["decode_profile.py", "--shape", "tiny", "--fuse", "grouped", "--steps", "2",
                                      "--device", "cpu", "--out", str(out)])
    decode_profile.main()
    assert grad == [False, False]  # dense, then compressed
    assert set(json.loads(out.read_text())["models"]) == {"dense", "r0.5"}


def test_runs_record_what_the_gpu_holds_beyond_the_weights_before_measuring(monkeypatch):
    """``resident_gib``: memory allocated before the first forward, beyond the weights (the workspace rows' share
    that no forward takes: leftovers of building the model); None off a GPU."""
    from sharvet.inference.measure import model_run
    from sharvet.inference.records import GIB
    from sharvet.inference.shapes import random_model, shape_config
    from sharvet.inference.traffic import stored_bytes

    model = random_model(shape_config("tiny"), torch.float32, torch.device("cpu"), 0)
    assert model_run(model, "dense", torch.device("cpu")).resident_gib is None
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: stored_bytes(model) + 3 * GIB)
    assert model_run(model, "dense", torch.device("cuda")).resident_gib == pytest.approx(3.0)


def test_profile_of_a_prefill_reports_host_and_device_time(tmp_path, monkeypatch, capsys):
    """``decode_profile.py --prefill N``: an N-token forward of each model, with the host's issue time beside it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import decode_profile

    out = tmp_path / "prefill.json"
    monkeypatch.setattr(sys, "argv", ["decode_profile.py", "--shape", "tiny", "--prefill", "8", "--device", "cpu",
                                      "--out", str(out)])
    decode_profile.main()
    models = json.loads(out.read_text())["models"]
    assert set(models) == {"dense", "r0.5"}
    assert all(m["forward_ms_profiled"] > 0 and m["host_ms"] > 0 and m["events_per_forward"] > 0
               for m in models.values())
    assert models["r0.5"]["stored_gib"] < models["dense"]["stored_gib"]
    assert all(m["resident_gib"] is None and m["workspace_gib"] is None for m in models.values())  # no GPU here
    assert "ms a forward (profiled; the host issued it in" in capsys.readouterr().out


def test_prefill_graphs_are_recorded_once_per_shape_with_positions_on_the_device(monkeypatch):
    """--prefill-graph: on a GPU each prefill shape's forward is recorded once (``record_graph``) and its replays
    timed; positions go in as a tensor (transformers would read the cache's length on the host, which a capture
    refuses), the cache filled first; the records say "+graph", and such records do not replace others."""
    from sharvet.inference import bench, measure
    from sharvet.inference.measure import BenchSettings, StepRunner
    from sharvet.inference.records import _key
    from sharvet.inference.shapes import random_model, shape_config

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    graph = BenchSettings(prefill_graph=True, compile_prefill=True)
    assert graph.captures_prefill(cuda) and not graph.captures_prefill(cpu)
    assert bench._prefill_mode(graph, cuda) == "default+graph"
    assert bench._prefill_mode(BenchSettings(prefill_graph=True), cuda) == "eager+graph"
    assert bench._prefill_mode(graph, cpu) is None
    assert _key({"prefill_compile_mode": "default+graph"}) != _key({"prefill_compile_mode": "default"})

    events, positions = [], []

    def recorded(forward, device, reset):  # as measure.record_graph runs it, without the GPU's graph
        events.append("record")
        for _ in range(2):  # its warm-up, then the capture
            reset()
            forward()
        return types.SimpleNamespace(replay=forward, pool=lambda: (0, 1))

    def static_cache(model, length):  # the cache's resets, seen in order with the forwards
        cache = make_cache(model, length)
        reset = cache.reset
        cache.reset = lambda: events.append("reset") or reset()
        return cache

    make_cache = measure._static_cache
    monkeypatch.setattr(measure, "record_graph", recorded)
    monkeypatch.setattr(measure, "_static_cache", static_cache)
    model = random_model(shape_config("tiny"), torch.float32, cpu, 0)
    runner = StepRunner(model, BenchSettings(prefill_graph=True), cpu)
    runner.prefill_captures = True  # as on a GPU; the recording itself is the patched function above
    step = runner._step
    runner._step = lambda ids, pos, cache: events.append("forward") or positions.append(pos) or step(ids, pos, cache)
    runner.prefill(2, 4)
    assert events.count("record") == 1
    # the cache fill, then every forward (recording, warm-up, timed) on a cache reset just before it: transformers
    # 5.17 writes a prefill at the cache's own position, past the end after a forward without a reset
    forwards = [i for i, e in enumerate(events) if e == "forward"]
    assert len(forwards) == 1 + 2 + 1 + runner.settings.repeats
    assert all(events[i - 1] == "reset" for i in forwards[1:])
    assert all(torch.equal(p, torch.arange(4).expand(2, -1)) for p in positions)


def test_a_watch_on_the_prefill_sees_the_timed_forwards_only():
    """A profiler entered by ``StepRunner.prefill(watch=...)`` records the ``repeats`` timed forwards, neither the
    warm-up nor a compiled prefill's eager cache fill (which the profile of a compiled prefill mixed in before)."""
    import contextlib

    from sharvet.inference.measure import BenchSettings, StepRunner
    from sharvet.inference.shapes import random_model, shape_config

    device = torch.device("cpu")
    model = random_model(shape_config("tiny"), torch.float32, device, 0)
    watching, seen = [False], []
    model.register_forward_hook(lambda *_: seen.append(watching[0]))

    @contextlib.contextmanager
    def watch():
        watching[0] = True
        yield
        watching[0] = False

    runner = StepRunner(model, BenchSettings(repeats=3), device, prefill_compiler=lambda f: f)  # as if compiled
    # the steady peak too: reset after the warm-up forward, read after the timed ones
    runner.memory = types.SimpleNamespace(steady_start=lambda: seen.append("steady start"),
                                          steady_end=lambda pools: seen.append("steady end"))
    runner.prefill(1, 8, watch=watch())
    # cache fill, warm-up, the three timed forwards
    assert seen == [False, False, "steady start", True, True, True, "steady end"]


def test_decode_windows_replay_the_same_positions_and_keep_the_median():
    """Each timed window decodes the same positions from the same token (so windows differ only in time), the
    median per step is kept and the windows' spread is recorded."""
    from sharvet.inference.measure import BenchSettings, StepRunner
    from sharvet.inference.shapes import random_model, shape_config

    device = torch.device("cpu")
    model = random_model(shape_config("tiny"), torch.float32, device, 0)
    seen: list[tuple[int, int]] = []

    def recording(step):
        def run(ids, pos, cache):
            seen.append((int(pos), int(ids[0, 0])))
            return step(ids, pos, cache)
        return run

    settings = BenchSettings(decode_prompt=4, decode_steps=3, warmup=2, decode_windows=3)
    with torch.no_grad():
        timing = StepRunner(model, settings, device, recording).decode(1)
    # the first warm-up, then per window: the timed steps (and before each later window, the warm-up again)
    assert [p for p, _ in seen[:2]] == [4, 5] and len(seen) == 2 + 3 + 2 * (2 + 3)
    windows = [seen[2:5], seen[7:10], seen[12:15]]
    assert windows[0] == windows[1] == windows[2] and [p for p, _ in windows[0]] == [6, 7, 8]
    assert seen[5:7] == seen[10:12] == seen[:2]
    assert timing.seconds_per_step > 0 and timing.spread >= 0
    assert len(timing.windows) == len(timing.host_windows) == 3
    assert timing.seconds_per_step == sorted(timing.windows)[1]


def test_the_workspace_excess_is_recorded_in_mib():
    """The memory target compares workspaces (peak minus weights); the excess is kept at 0.01 MiB, below the GiB
    fields' rounding."""
    from sharvet.inference.records import excess_mib

    assert excess_mib(15.5, 15.0, 9.0 + 3 / 1024, 8.5) == pytest.approx(3.0)
    assert excess_mib(15.5, 15.0, 8.9, 8.5) == pytest.approx(-102.4)
    assert excess_mib(None, 15.0, 9.0, 8.5) is None


def test_peak_memory_keeps_the_warm_up_out_of_the_steady_peak(monkeypatch):
    """Compiling's buffers (a warm-up) raise the whole run's peak, never the steady one; the steady peak is the
    highest of the timed phases (prefill, then decode) and the whole run's is the highest of everything."""
    from sharvet.inference import measure

    counter = {"now": 1.0, "peak": 1.0}

    def use(gib: float) -> None:  # allocate, then free
        counter["peak"] = max(counter["peak"], counter["now"] + gib)

    monkeypatch.setattr(measure, "peak_gib", lambda device: counter["peak"])
    monkeypatch.setattr(measure, "reset_peak", lambda device: counter.update(peak=counter["now"]))
    memory = measure.PeakMemory(torch.device("cuda"))
    use(0.5)  # prefill's compiling
    memory.steady_start()
    use(0.1)  # timed prefills
    memory.steady_end()
    use(0.3)  # decode's compiling and capture
    memory.steady_start()
    use(0.2)  # timed decode steps
    memory.steady_end()
    assert memory.whole == pytest.approx(1.5) and memory.steady == pytest.approx(1.2)
    memory.start()  # the next row starts afresh
    assert memory.whole is None and memory.steady is None


def test_pool_free_bytes_count_only_the_given_graphs_pools(monkeypatch):
    """A graph's pool holds its temporaries beyond its live tensors (total minus allocated); other pools (the
    default one, a dead graph's) do not count. Segments as ``torch.cuda.memory_snapshot`` lists them."""
    from sharvet.inference import measure
    from sharvet.inference.records import GIB

    segments = [{"segment_pool_id": (0, 0), "total_size": 8 << 30, "allocated_size": 1 << 30},  # the default pool
                {"segment_pool_id": (1, 2), "total_size": 20 << 20, "allocated_size": 4 << 20},
                {"segment_pool_id": (1, 2), "total_size": 2 << 20, "allocated_size": 0},
                {"segment_pool_id": (1, 3), "total_size": 64 << 20, "allocated_size": 0}]  # another graph's
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: segments)
    assert measure.pool_free_gib([(1, 2)]) * GIB == 18 << 20
    assert measure.pool_free_gib([(1, 2), (1, 3)]) * GIB == 82 << 20
    assert measure.pool_free_gib([]) == 0.0


def test_the_table_shows_the_steady_excess_in_brackets():
    from sharvet.inference.records import table

    row = {"shape": "s", "ratio": 0.5, "phase": "prefill", "batch": 1, "tokens_per_step": 8, "dense_tokens_per_s": 1.0,
           "compressed_tokens_per_s": 2.0, "speedup": 2.0, "bound": 2.0, "peak_gpu_gib_dense": 1.0,
           "peak_gpu_gib_compressed": 0.5, "workspace_excess_mib": 60.44, "steady_excess_mib": -0.5}
    assert table([row]).endswith("| +60.44 (-0.50) |")
    assert table([{**row, "steady_excess_mib": None}]).endswith("| +60.44 |")  # records from before the steady peak


def test_records_name_the_commit_and_say_when_the_tree_differs(tmp_path):
    """A copy of a working tree may hold an older HEAD than its files (the GPU machine's copy did): the record's
    commit then carries ``-dirty``; untracked files (results, outputs) do not count."""
    import subprocess

    from sharvet.inference.records import git_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "first")
    head = git("rev-parse", "--short", "HEAD")
    (tmp_path / "result.json").write_text("{}")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path) == f"{head}-dirty"
    assert git_commit(tmp_path / "not-a-repo") is None


def test_speed_figure_from_records(tmp_path):
    """benchmarks/plot_inference.py's figure: records of one shape at batch 1 (and the throughput setting) whose
    note or command holds the text asked for; a PNG is written."""
    from sharvet.inference.plots import chosen, speed_figure

    def rec(phase: str, ratio: float, speedup: float, batch: int = 1, note: str = "s9") -> dict:
        return {"shape": "llama3-8b", "phase": phase, "ratio": ratio, "speedup": speedup, "bound": 1 / ratio,
                "batch": batch, "note": note, "command": "python benchmarks/inference.py"}

    records = [rec("decode", 0.5, 1.2), rec("decode", 0.7, 1.0), rec("prefill", 0.5, 1.1),
               rec("throughput", 0.5, 1.4, batch=512), rec("decode", 0.5, 1.0, batch=16),
               rec("decode", 0.5, 0.9, note="s8"), {**rec("decode", 0.5, 1.0), "shape": "tiny"}]
    picked = chosen(records, shape="llama3-8b", contains="s9")
    assert [r["speedup"] for r in picked] == [1.2, 1.0, 1.1, 1.4]
    path = speed_figure(picked, tmp_path / "speed.png", title="test")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def test_compiled_prefill_traces_once():
    """A compiled prefill is traced once per shape: its static cache is allocated by an eager forward first (a
    graph traced over transformers' lazily allocated cache was recompiled at every timed call on the H200)."""
    from sharvet.inference.measure import BenchSettings, StepRunner
    from sharvet.inference.shapes import random_model, shape_config

    traced = []

    def backend(gm, _inputs):  # dynamo's backend: called once per (re)compilation
        traced.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = random_model(shape_config("tiny"), torch.float32, torch.device("cpu"), 0)
    compile_ = functools.partial(torch.compile, backend=backend, dynamic=False)
    runner = StepRunner(model, BenchSettings(), torch.device("cpu"), prefill_compiler=compile_)
    with torch.no_grad():
        runner.prefill(1, 8)  # a warm-up and the timed calls
    torch._dynamo.reset()
    assert len(traced) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_captured_decode_steps_match_eager_ones():
    """The default decode (compiled, each step replayed from a CUDA graph of its own) gives eager's tokens, and a
    second greedy run on a new cache records a new graph instead of replaying one that writes the old cache."""
    from sharvet.inference.measure import BenchSettings, StepRunner
    from sharvet.inference.shapes import random_model, shape_config

    cuda = torch.device("cuda")
    model = random_model(shape_config("tiny"), torch.float32, cuda, 0)
    prompt = torch.randint(100, 256, (2, 5), generator=torch.Generator().manual_seed(1)).to(cuda)
    with torch.no_grad():
        eager = StepRunner(model, BenchSettings(compile=False), cuda).greedy(prompt, 8)
        runner = StepRunner(model, BenchSettings(), cuda)
        assert runner.captures
        first, second = runner.greedy(prompt, 8), runner.greedy(prompt, 8)
        timing = runner.decode(2)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert len(timing.windows) == len(timing.host_windows) == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_every_row_carries_both_peaks_on_a_gpu():
    """On a GPU every row (prefill, captured decode, throughput) carries the whole run's peak and the steady one."""
    from sharvet.inference.measure import BenchSettings, measure_steps
    from sharvet.inference.shapes import random_model, shape_config

    cuda = torch.device("cuda")
    model = random_model(shape_config("tiny"), torch.bfloat16, cuda, 0)
    settings = BenchSettings(batches=(1,), prefill_len=16, decode_steps=4, throughput=(4, 8))
    run = measure_steps(model, "dense", settings, cuda)
    assert all(0 < m.steady_peak_gib and 0 < m.peak_gib for m in run.rows.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_graphs_pool_counts_its_temporaries():
    """A replay writes its temporaries into the graph's pool without allocating them: the pool's free bytes hold
    them (here a 4 MiB ``x * 2``)."""
    from sharvet.inference.measure import pool_free_gib, record_graph
    from sharvet.inference.records import GIB

    cuda = torch.device("cuda")
    x, out = torch.ones(1024, 1024, device=cuda), torch.empty((), device=cuda)
    graph = record_graph(lambda: out.copy_((x * 2).sum()), cuda)
    assert pool_free_gib([graph.pool()]) * GIB >= 4 << 20
    assert pool_free_gib([]) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_measured_model_leaves_no_memory_to_the_next():
    """Every capture warms up and records on one stream per GPU: a stream per capture left its cuBLAS workspace
    (32 MiB on an H200) allocated, which the next model's peak counted."""
    from sharvet.inference.measure import BenchSettings, StepRunner, release
    from sharvet.inference.shapes import random_model, shape_config

    cuda = torch.device("cuda")
    model = random_model(shape_config("tiny"), torch.bfloat16, cuda, 0)
    with torch.no_grad():
        StepRunner(model, BenchSettings(), cuda).decode(1)
        release(cuda)
        before = torch.cuda.memory_allocated(cuda)
        StepRunner(model, BenchSettings(), cuda).decode(1)
        release(cuda)
    assert torch.cuda.memory_allocated(cuda) - before < 1 << 20
