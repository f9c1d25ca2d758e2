"""Fault battery (issue 14): bad inputs, damaged files and interruptions against the real ``sharvet`` CLI.

Every case runs the command line in a fresh process on a tiny LLaMA (random weights, word-level tokenizer,
built here: no download) and its ratio-0.5 checkpoint CK, and is classified from what a user would see:

- ``ok``: the command was meant to succeed, exited 0, and its result is right (where checkable);
- ``clear_error``: meant to fail, exited non-zero with one ``sharvet: error`` line naming the file or flag;
- ``unclear_error``: failed, but the line does not name what is wrong;
- ``traceback``: a Python traceback reached the user;
- ``silent_wrong``: exited 0 (or wrote a file) where it should have refused;
- ``lost_results``: computed results that were neither printed nor written.

    python benchmarks/reliability.py [--out results/reliability/summary.json] [--only NAME,...]
    python benchmarks/reliability.py --render results/reliability/summary.json > docs/reliability.md

Prints a table and writes the records; ``--render`` turns records into docs/reliability.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "house", "and", "big", "red", "blue", "."]
CLI = [sys.executable, "-m", "sharvet.cli"]


@dataclass
class Case:
    name: str
    #: argv after ``sharvet``; ``{CK}``, ``{MODEL}``, ``{DATA}``, ``{TMP}`` are filled in
    argv: list[str]
    #: what a correct run does: "ok", "error" (exit 2), "not_run" (exit 3), "non_finite" (exit 4)
    expect: str
    #: text the error line must contain (the file or flag at fault)
    needle: str = ""
    #: prepares the case's copy of CK (``TMP/ck``) or other files
    setup: Callable[[dict], None] | None = None
    #: extra check of the outcome (True = right); run for ok / error cases
    check: Callable[[dict, subprocess.CompletedProcess], bool] | None = None
    fault: str = ""


@dataclass
class Record:
    case: str
    fault: str
    command: str
    exit_code: int
    outcome: str
    seen: str = field(default="")
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d"))


# ------------------------------------------------------------------------------------------ fixtures


def build_fixtures(root: Path) -> dict:
    """A tiny original model folder, a data folder and the checkpoint CK (through the real CLI)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    model = root / "model"
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="[UNK]").save_pretrained(model)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, bos_token_id=1,
                                 eos_token_id=2, pad_token_id=0)).save_pretrained(model)
    data = root / "data" / "wikitext2"
    data.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    rows = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (40,), generator=g).tolist()) for _ in range(80)]
    (data / "wiki.test.raw").write_text("\n".join(rows) + "\n")
    (data / "wiki.valid.raw").write_text("\n".join(rows[::-1]) + "\n")
    ctx = {"MODEL": str(model), "DATA": str(root / "data"), "CK": str(root / "ck")}
    done = subprocess.run([*CLI, "compress", str(model), "-o", ctx["CK"], "--ratio", "0.5", "--k", "2",
                           "--data-dir", ctx["DATA"], "--calib-samples", "4", "--calib-seq-len", "16",
                           "--cache-dir", "none", "--no-progress", "--device", "cpu"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"could not build CK:\n{done.stderr}")
    return ctx


# ------------------------------------------------------------------------------------------ damage


def _ck(ctx: dict) -> Path:
    return Path(ctx["TMP"]) / "ck"


def _edit_config(ctx: dict, edit: Callable[[dict], None], *, drop_record: bool = False) -> None:
    path = _ck(ctx) / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    if drop_record:
        (_ck(ctx) / "sharvet-checkpoint.json").unlink()


def no_sharvet_section(drop_record: bool):
    return lambda ctx: _edit_config(ctx, lambda c: c.pop("sharvet"), drop_record=drop_record)


def rank_changed(drop_record: bool):
    def shrink(c: dict) -> None:
        c["sharvet"]["groups"][0]["rank"] -= 1
    return lambda ctx: _edit_config(ctx, shrink, drop_record=drop_record)


def random_bytes(ctx: dict) -> None:
    path = _ck(ctx) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8192] = os.urandom(8192)
    path.write_bytes(bytes(data))


def truncate(name: str):
    def cut(ctx: dict) -> None:
        path = _ck(ctx) / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


def remove(name: str):
    return lambda ctx: (_ck(ctx) / name).unlink()


def nan_weights(ctx: dict) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = _ck(ctx) / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k in tensors if k.endswith("basis"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(path), metadata=meta)


def empty_wikitext(ctx: dict) -> None:
    folder = Path(ctx["TMP"]) / "data" / "wikitext2"
    folder.mkdir(parents=True)
    (folder / "wiki.test.raw").write_text("")


def a_file(ctx: dict) -> None:
    (Path(ctx["TMP"]) / "FILE").write_text("x")


def full_folder(ctx: dict) -> None:
    (Path(ctx["TMP"]) / "out").mkdir()
    (Path(ctx["TMP"]) / "out" / "keep.txt").write_text("x")


def stale_partial(ctx: dict) -> None:
    stale = Path(ctx["TMP"]) / ".fresh.partial-killed1"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"0" * 4096)


def good_copy_at(name: str):
    return lambda ctx: shutil.copytree(_ck(ctx), Path(ctx["TMP"]) / name)


def weights_only_model(ctx: dict) -> None:
    folder = Path(ctx["TMP"]) / "nomodel"
    folder.mkdir()
    shutil.copy(Path(ctx["MODEL"]) / "config.json", folder / "config.json")


def unsupported_model(ctx: dict) -> None:
    from transformers import OPTConfig

    OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2).save_pretrained(
        Path(ctx["TMP"]) / "opt")


def earlier_run(ctx: dict) -> None:
    subprocess.run([*CLI, *fill(REFINE_ARGS + ["-o", "{TMP}/first", "--max-steps", "1"], ctx)], capture_output=True,
                   check=True)


def stale_not_removed(ctx: dict, _done) -> bool:
    return not (Path(ctx["TMP"]) / ".fresh.partial-killed1").exists()


def good_kept(ctx: dict, _done) -> bool:
    return _weights(Path(ctx["TMP"]) / "kept") == _weights(_ck(ctx))


EVAL = ["eval", "{CK_COPY}", "--ppl", "wikitext2", "--context", "16", "--data-dir", "{DATA}", "--no-progress"]
INFO = ["info", "{CK_COPY}"]
COMPRESS = ["compress", "{MODEL}", "--ratio", "0.5", "--k", "2", "--data-dir", "{DATA}", "--calib-samples", "2",
            "--calib-seq-len", "16", "--cache-dir", "none", "--no-progress"]
REFINE_ARGS = ["refine", "{CK_COPY}", "--data-dir", "{DATA}", "--train-samples", "8", "--train-seq-len", "16",
               "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--no-progress",
               "--refine-output", "{TMP}/run", "--checkpoint-every", "1"]


def cases() -> list[Case]:
    c = [
        # compress: arguments, checked before the model loads
        Case("ratio-0", [*COMPRESS, "-o", "{TMP}/o", "--ratio", "0"], "error", "--ratio", fault="--ratio 0"),
        Case("ratio-1.5", [*COMPRESS, "-o", "{TMP}/o", "--ratio", "1.5"], "error", "--ratio", fault="--ratio 1.5"),
        Case("ratio-text", [*COMPRESS, "-o", "{TMP}/o", "--ratio", "abc"], "error", "--ratio", fault="--ratio abc"),
        Case("k-0", [*COMPRESS, "-o", "{TMP}/o", "--k", "0"], "error", "--k", fault="--k 0"),
        Case("k-too-large", [*COMPRESS, "-o", "{TMP}/o", "--k", "99"], "error", "--k", fault="--k above the layers"),
        Case("mu-2", [*COMPRESS, "-o", "{TMP}/o", "--mu", "2"], "error", "--mu", fault="--mu 2"),
        Case("grouping-unknown", [*COMPRESS, "-o", "{TMP}/o", "--grouping", "kmeans"], "error", "kmeans",
             fault="unknown --grouping"),
        Case("method-unknown", [*COMPRESS, "-o", "{TMP}/o", "--method", "foo"], "error", "--method",
             fault="unknown --method"),
        Case("variant-unknown", [*COMPRESS, "-o", "{TMP}/o", "--variant", "Z"], "error", "Z",
             fault="unknown --variant"),
        Case("variant-T-refine", [*COMPRESS, "-o", "{TMP}/o", "--variant", "T", "--refine"], "error", "T",
             fault="--variant T with --refine"),
        Case("shared-types-unknown", [*COMPRESS, "-o", "{TMP}/o", "--shared-types", "q,zz"], "error", "zz",
             fault="unknown --shared-types"),
        Case("calib-samples-0", [*COMPRESS, "-o", "{TMP}/o", "--calib-samples", "0"], "error", "--calib-samples",
             fault="--calib-samples 0"),
        Case("model-missing", ["compress", "{TMP}/nope", "-o", "{TMP}/o"], "error", "nope",
             fault="model folder missing"),
        Case("gguf-missing", ["compress", "{TMP}/x.gguf", "-o", "{TMP}/o"], "error", "x.gguf",
             fault="GGUF file missing"),
        Case("model-without-weights", ["compress", "{TMP}/nomodel", "-o", "{TMP}/o", "--data-dir", "{DATA}",
                                       "--cache-dir", "none", "--no-progress"], "error", "nomodel",
             setup=weights_only_model, fault="model folder with config.json only"),
        Case("model-unsupported", ["compress", "{TMP}/opt", "-o", "{TMP}/o"], "error", "opt",
             setup=unsupported_model, fault="an architecture without an adapter (OPT)"),
        Case("data-dir-missing", [*COMPRESS, "-o", "{TMP}/o", "--data-dir", "/no/such/dir"], "error",
             "/no/such/dir", fault="--data-dir missing"),
        Case("calib-data-missing", [*COMPRESS, "-o", "{TMP}/o", "--calib-data", "{TMP}/none.txt"], "error",
             "none.txt", fault="--calib-data file missing"),
        Case("output-proc", [*COMPRESS, "-o", "/proc/x"], "error", "/proc/x", fault="-o /proc/x"),
        Case("output-under-file", [*COMPRESS, "-o", "{TMP}/FILE/sub"], "error", "FILE", setup=a_file,
             fault="-o FILE/sub"),
        Case("output-is-file", [*COMPRESS, "-o", "{TMP}/FILE"], "error", "FILE", setup=a_file,
             fault="-o an existing file"),
        Case("output-not-empty", [*COMPRESS, "-o", "{TMP}/out"], "error", "--overwrite", setup=full_folder,
             fault="-o a non-empty folder"),
        Case("stale-partial", [*COMPRESS, "-o", "{TMP}/fresh"], "ok", setup=stale_partial, check=stale_not_removed,
             fault="partial folder of a killed save"),
        # eval
        Case("eval-good", EVAL, "ok", fault="(control) a good checkpoint"),
        Case("eval-no-sharvet-section", EVAL, "error", "config.json", setup=no_sharvet_section(False),
             fault="config.json lost its sharvet section"),
        Case("eval-no-sharvet-section-legacy", EVAL, "error", "ck", setup=no_sharvet_section(True),
             fault="same, checkpoint without integrity record"),
        Case("eval-random-bytes", EVAL, "error", "model.safetensors", setup=random_bytes,
             fault="8 KB of random bytes inside the weights"),
        Case("eval-truncated-weights", EVAL, "error", "model.safetensors", setup=truncate("model.safetensors"),
             fault="weights truncated"),
        Case("eval-truncated-weights-noverify", [*EVAL, "--no-verify"], "error", "model.safetensors",
             setup=truncate("model.safetensors"), fault="weights truncated, --no-verify"),
        Case("eval-nan-noverify", [*EVAL, "--no-verify"], "non_finite", "wikitext2", setup=nan_weights,
             fault="NaN weights, --no-verify"),
        Case("eval-truncated-config", EVAL, "error", "config.json", setup=truncate("config.json"),
             fault="config.json truncated"),
        Case("eval-truncated-config-noverify", [*EVAL, "--no-verify"], "error", "config.json",
             setup=truncate("config.json"), fault="config.json truncated, --no-verify"),
        Case("eval-no-tokenizer", EVAL, "error", "tokenizer", setup=remove("tokenizer.json"),
             fault="tokenizer.json missing"),
        Case("eval-no-tokenizer-noverify", [*EVAL, "--no-verify"], "error", "tokenizer",
             setup=remove("tokenizer.json"), fault="tokenizer.json missing, --no-verify"),
        Case("eval-max-tokens-0", [*EVAL, "--max-tokens", "0"], "error", "--max-tokens", fault="--max-tokens 0"),
        Case("eval-max-tokens-negative", [*EVAL, "--max-tokens", "-5"], "error", "--max-tokens",
             fault="--max-tokens -5"),
        Case("eval-context-1", [*EVAL, "--context", "1"], "error", "--context", fault="--context 1"),
        Case("eval-stride-0", [*EVAL, "--stride", "0"], "error", "--stride", fault="--stride 0"),
        Case("eval-limit-0", [*EVAL, "--tasks", "piqa", "--limit", "0"], "error", "--limit", fault="--limit 0"),
        Case("eval-json-proc", [*EVAL, "--json", "/proc/r.json"], "error", "/proc/r.json",
             fault="--json /proc/r.json"),
        Case("eval-json-folder", [*EVAL, "--json", "{TMP}"], "error", "--json", fault="--json a folder"),
        Case("eval-ppl-typo", [*EVAL, "--ppl", "wikitext3"], "error", "wikitext3", fault="--ppl wikitext3"),
        Case("eval-ppl-missing-data", [*EVAL, "--ppl", "wikitext2,ptb", "--offline"], "not_run", "ptb",
             fault="--ppl ptb without its data"),
        Case("eval-task-missing-data", [*EVAL, "--tasks", "copa", "--offline"], "not_run", "copa",
             fault="--tasks copa without its data"),
        Case("eval-task-unknown", [*EVAL, "--tasks", "nosuchtask"], "error", "nosuchtask",
             fault="--tasks nosuchtask"),
        Case("eval-empty-data-file", [*EVAL, "--data-dir", "{TMP}/data"], "error", "wiki.test.raw",
             setup=empty_wikitext, fault="empty WikiText-2 file"),
        Case("eval-not-a-model", ["eval", "{TMP}", "--data-dir", "{DATA}"], "error", "config.json",
             fault="a folder that is no model"),
        # info
        Case("info-good", INFO, "ok", fault="(control) a good checkpoint"),
        Case("info-random-bytes", INFO, "error", "model.safetensors", setup=random_bytes,
             fault="random bytes inside the weights"),
        Case("info-rank-changed", INFO, "error", "config.json", setup=rank_changed(False),
             fault="a rank changed in config.json"),
        Case("info-rank-changed-legacy", INFO, "error", "model.safetensors", setup=rank_changed(True),
             fault="same, checkpoint without integrity record"),
        Case("info-truncated-config", INFO, "error", "config.json", setup=truncate("config.json"),
             fault="config.json truncated"),
        Case("info-not-a-checkpoint", ["info", "{MODEL}"], "error", "not a sharvet checkpoint",
             fault="an original model folder"),
        # refine
        Case("refine-diverges", [*REFINE_ARGS, "-o", "{TMP}/r", "--lr", "1e6", "--grad-clip", "0"], "non_finite",
             "finite", fault="--lr 1e6 (loss goes to inf / nan)"),
        Case("refine-diverges-overwrite", [*REFINE_ARGS, "-o", "{TMP}/kept", "--overwrite", "--lr", "1e6",
                                           "--grad-clip", "0"], "non_finite", "finite", setup=good_copy_at("kept"),
             check=good_kept, fault="same with --overwrite onto a good checkpoint"),
        Case("refine-output-proc", [*REFINE_ARGS, "-o", "/proc/x"], "error", "/proc/x", fault="-o /proc/x"),
        Case("refine-resume-conflict", [*REFINE_ARGS, "-o", "{TMP}/second", "--resume", "--lr", "5e-3"], "error",
             "lr", setup=earlier_run, fault="--resume with another --lr"),
        Case("refine-run-exists", [*REFINE_ARGS, "-o", "{TMP}/second"], "error", "--resume", setup=earlier_run,
             fault="earlier run's checkpoints, no --resume"),
        Case("refine-train-samples-0", [*REFINE_ARGS, "-o", "{TMP}/r", "--train-samples", "0"], "error",
             "--train-samples", fault="--train-samples 0"),
        Case("refine-max-steps-0", [*REFINE_ARGS, "-o", "{TMP}/r", "--max-steps", "0"], "error", "--max-steps",
             fault="--max-steps 0"),
        Case("refine-epochs-0", [*REFINE_ARGS, "-o", "{TMP}/r", "--epochs", "0"], "error", "epochs",
             fault="--epochs 0"),
        Case("refine-train-data-missing", [*REFINE_ARGS, "-o", "{TMP}/r", "--train-data", "{TMP}/none.txt"],
             "error", "none.txt", fault="--train-data file missing"),
        Case("refine-not-a-checkpoint", ["refine", "{MODEL}", "-o", "{TMP}/r"], "error", "not a sharvet checkpoint",
             fault="an original model folder"),
        # similarity / grouping outputs
        Case("similarity-plot-proc", ["similarity", "{MODEL}", "--plot", "/proc/s.png", "--data-dir", "{DATA}"],
             "error", "/proc/s.png", fault="--plot /proc/s.png"),
        Case("grouping-strategy-unknown", ["grouping", "{MODEL}", "--plot", "{TMP}/g.png", "--strategies",
                                           "X=kmeans"], "error", "kmeans", fault="--strategies X=kmeans"),
    ]
    return c


# ------------------------------------------------------------------------------------------ running


def fill(argv: list[str], ctx: dict) -> list[str]:
    out = []
    for a in argv:
        for key, value in ctx.items():
            a = a.replace("{" + key + "}", value)
        out.append(a)
    return out


def classify(case: Case, ctx: dict, done: subprocess.CompletedProcess) -> tuple[str, str]:
    """The outcome and the line the user saw."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("sharvet: ")]
    seen = errors[-1] if errors else (done.stdout.strip().splitlines() or [""])[-1]
    if "Traceback (most recent call last)" in done.stderr:
        return "traceback", seen
    expected_code = {"ok": 0, "error": 2, "not_run": 3, "non_finite": 4}[case.expect]
    if case.expect == "ok":
        if done.returncode != 0:
            return "unclear_error", seen
        return ("ok" if case.check is None or case.check(ctx, done) else "silent_wrong"), seen
    if done.returncode == 0:
        return "silent_wrong", seen
    if case.check is not None and not case.check(ctx, done):
        return "silent_wrong", seen
    if case.expect == "not_run" and "not run" not in done.stdout:
        return "lost_results", seen
    named = case.needle.lower() in " ".join(errors).lower()
    one_line = len([e for e in errors if e.startswith("sharvet: error")]) <= 1
    return ("clear_error" if done.returncode == expected_code and named and one_line else "unclear_error"), seen


def run_case(case: Case, base: dict, scratch: Path) -> Record:
    tmp = Path(tempfile.mkdtemp(prefix=f"{case.name}-", dir=scratch))
    shutil.copytree(base["CK"], tmp / "ck")
    ctx = {**base, "TMP": str(tmp), "CK_COPY": str(tmp / "ck")}
    if case.setup is not None:
        case.setup(ctx)
    argv = fill(case.argv, ctx)
    done = subprocess.run([*CLI, *argv], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    outcome, seen = classify(case, ctx, done)
    command = "sharvet " + " ".join(a.replace(str(tmp), "TMP").replace(base["CK"], "CK") for a in argv)
    command = command.replace(base["MODEL"], "MODEL").replace(base["DATA"], "DATA")
    seen = seen.replace(str(tmp), "TMP").replace(base["MODEL"], "MODEL").replace(base["DATA"], "DATA")
    return Record(case.name, case.fault, command, done.returncode, outcome, seen[:300])


# ------------------------------------------------------------------------------------------ interruptions


def _weights(folder: Path) -> str:
    """A digest of the tensors themselves (the file's header orders its metadata differently on every write)."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(folder / "model.safetensors").items()):
        h.update(name.encode() + t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _interrupted(argv: list[str], *, sig: int, when: Callable[[], bool], timeout: float = 300) -> int:
    proc = subprocess.Popen([*CLI, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.time()
    while proc.poll() is None and not when() and time.time() - start < timeout:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=timeout)
    return proc.returncode


def interruption_cases(base: dict, scratch: Path) -> list[Record]:
    """Stop a refinement by SIGINT / SIGTERM / SIGKILL, resume it, and compare with an uninterrupted run."""
    records = []
    tmp = Path(tempfile.mkdtemp(prefix="interrupt-", dir=scratch))
    ctx = {**base, "TMP": str(tmp), "CK_COPY": base["CK"]}
    args = fill([*REFINE_ARGS[:-4], "--epochs", "2", "--checkpoint-every", "1"], ctx)
    straight = tmp / "straight"
    subprocess.run([*CLI, *args, "-o", str(straight), "--refine-output", str(tmp / "run-straight")],
                   capture_output=True, check=True)
    for name, sig in [("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM), ("SIGKILL", signal.SIGKILL)]:
        out, run = tmp / f"r-{name}", tmp / f"run-{name}"
        ckpts = run / "checkpoints"
        code = _interrupted([*args, "-o", str(out), "--refine-output", str(run)], sig=sig,
                            when=lambda: ckpts.is_dir() and len([p for p in ckpts.glob("step-*")]) >= 1)
        resumed = subprocess.run([*CLI, *args, "-o", str(out), "--refine-output", str(run), "--resume"],
                                 capture_output=True, text=True)
        same = resumed.returncode == 0 and _weights(out) == _weights(straight)
        outcome = "ok" if same else ("traceback" if "Traceback" in resumed.stderr else "silent_wrong")
        records.append(Record(f"refine-{name}-resume", f"refine stopped by {name} after its first checkpoint, then "
                              "--resume", f"kill -{name[3:]} during sharvet refine; sharvet refine ... --resume",
                              resumed.returncode, outcome,
                              f"first run exit {code}; resumed run {'bit-exact' if same else 'DIFFERS'}"))
    compress = fill([*COMPRESS, "-o", "{OUT}"], ctx)
    start = time.time()
    subprocess.run([*CLI, *[a.replace("{OUT}", str(tmp / "c-timed")) for a in compress]], capture_output=True,
                   check=True)
    took = time.time() - start
    for name, sig, at in [("SIGINT", signal.SIGINT, 0.5), ("SIGKILL", signal.SIGKILL, 0.8)]:
        out = tmp / f"c-{name}"
        argv = [a.replace("{OUT}", str(out)) for a in compress]
        began = time.time()
        code = _interrupted(argv, sig=sig, when=lambda: time.time() - began > at * took)
        done = subprocess.run([*CLI, "info", str(out)], capture_output=True, text=True) if out.exists() else None
        intact = done is None or done.returncode == 0  # absent, or complete and verified
        again = subprocess.run([*CLI, *argv, "--overwrite"], capture_output=True, text=True)
        clean = not any(tmp.glob(f".c-{name}.partial-*")) and again.returncode == 0
        records.append(Record(f"compress-{name}-then-rerun", f"compress stopped by {name} at {at:.0%} of its run "
                              "time, then run again", f"kill -{name[3:]} during sharvet compress; sharvet compress "
                              "... --overwrite", again.returncode, "ok" if intact and clean else "silent_wrong",
                              f"first run exit {code}; output {'absent' if done is None else 'complete, verified'} "
                              f"{'' if intact else 'DAMAGED'}; rerun exit {again.returncode}, no partial folder left: "
                              f"{clean}"))
    return records


# ------------------------------------------------------------------------------------------ main


EXIT_CODES = """| exit code | meaning |
|---|---|
| 0 | everything asked for ran |
| 1 | internal error (a bug): one line; `SHARVET_DEBUG=1` shows the traceback |
| 2 | bad input, or a file that cannot be used (missing, damaged, not writable): one line, before the work |
| 3 | finished, but some requested items did not run (their data is missing); the table is printed |
| 4 | numerical failure: a non-finite loss, gradient or perplexity; nothing non-finite is written |
| 130 | interrupted (Ctrl-C / SIGTERM); refinement keeps a checkpoint for `--resume` |
"""


def render(records: list[dict], source: str) -> str:
    """docs/reliability.md: the exit codes, then every fault with what the user sees."""
    counts = Counter(r["outcome"] for r in records)
    lines = ["# Reliability: what each fault looks like", "",
             "Every row is a case of `benchmarks/reliability.py`, run against the real command line on a tiny LLaMA "
             "and its ratio-0.5 checkpoint CK (a fresh copy per case, damaged as the row says). TMP is the case's "
             f"scratch folder. Records: `{source}`, run on {records[0].get('date', '?')} on the project's 2-core "
             "CPU machine (`python benchmarks/reliability.py`).", "",
             "Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", "", EXIT_CODES,
             "| case | fault | exit | outcome | what the user sees |", "|---|---|---|---|---|"]
    for r in records:
        seen = r["seen"].replace("|", "\\|")
        lines.append(f"| {r['case']} | {r['fault']} | {r['exit_code']} | {r['outcome']} | {seen} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render", default=None, help="print docs/reliability.md from this records file and stop")
    p.add_argument("--out", default="results/reliability/summary.json")
    p.add_argument("--only", default=None, help="comma list of case names")
    p.add_argument("--no-interruptions", action="store_true")
    a = p.parse_args()
    if a.render:
        print(render(json.loads(Path(a.render).read_text()), a.render), end="")
        return
    scratch = Path(tempfile.mkdtemp(prefix="sharvet-faults-"))
    try:
        base = build_fixtures(scratch / "base")
        chosen = [c for c in cases() if a.only is None or c.name in a.only.split(",")]
        records = []
        for case in chosen:
            records.append(run_case(case, base, scratch))
            r = records[-1]
            print(f"{r.case:36s} exit {r.exit_code:3d}  {r.outcome:14s} {r.seen[:110]}", flush=True)
        if not a.no_interruptions and a.only is None:
            for r in interruption_cases(base, scratch):
                records.append(r)
                print(f"{r.case:36s} exit {r.exit_code:3d}  {r.outcome:14s} {r.seen[:110]}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    counts = Counter(r.outcome for r in records)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in records], indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
