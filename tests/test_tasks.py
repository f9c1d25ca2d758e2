"""lm-eval tasks: the shipped local configurations against lm-eval's built-in tasks, data checks, metric keys.

The built-in tasks are built from the installed lm-eval's own YAML files, with their dataset replaced by
hand-written documents in the hub schema (no network); the local tasks read the same content written in the
upstream release formats. Same requests, same gold answers and same metrics mean the same scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lm_eval")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from sharvet.data import DATA_DIR_ENV, DataError  # noqa: E402
from sharvet.evaluation import task_catalog as catalog  # noqa: E402
from sharvet.evaluation import task_configs as configs  # noqa: E402
from sharvet.evaluation import task_files as files  # noqa: E402
from sharvet.evaluation import task_plan as planning  # noqa: E402
from sharvet.evaluation import task_results  # noqa: E402
from sharvet.evaluation import task_runner as runner  # noqa: E402
from sharvet.evaluation.results import evaluate, read_results  # noqa: E402
from sharvet.loading import LoadedModel  # noqa: E402

LM_EVAL_TASKS = Path(__import__("lm_eval").__file__).parent / "tasks"
BUILTIN_YAML = {
    "copa": "super_glue/copa/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "winogrande": "winogrande/default.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------ the same content: upstream files vs hub docs

COPA_RAW = [
    {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
     "choice2": "The grass was cut.", "question": "cause", "label": 0, "idx": 0},
    {"premise": "The elderly woman suffered a stroke.", "choice1": "The woman's daughter came over to clean her "
     "house.", "choice2": "The woman's daughter moved in to take care of her.", "question": "effect",
     "label": 1, "idx": 1},
]
COPA_HUB = COPA_RAW

PIQA_RAW = [
    {"goal": "How do I ready a guinea pig cage?", "sol1": "Use paper strips.", "sol2": "Use jeans."},
    {"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodgrain with  bobby pin "},
    {"goal": "To cool tea quickly,", "sol1": "add ice cubes.", "sol2": "add hot water."},
]
PIQA_LABELS = [0, 1, 0]
PIQA_HUB = [{**r, "label": lab} for r, lab in zip(PIQA_RAW, PIQA_LABELS)]

ARC_RAW = [  # the AI2 release layout, one question with numeric labels as some ARC questions have
    {"id": "Mercury_1", "question": {"stem": "Which gas do plants absorb?", "choices": [
        {"text": "oxygen", "label": "A"}, {"text": "carbon dioxide", "label": "B"},
        {"text": "nitrogen", "label": "C"}, {"text": "helium", "label": "D"}]}, "answerKey": "B"},
    {"id": "NYSEDREGENTS_2", "question": {"stem": "What is 2 + 2?", "choices": [
        {"text": "3", "label": "1"}, {"text": "4", "label": "2"}, {"text": "5", "label": "3"}]},
     "answerKey": "2"},
]
ARC_HUB = [{"id": r["id"], "question": r["question"]["stem"],
            "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                        "label": [c["label"] for c in r["question"]["choices"]]},
            "answerKey": r["answerKey"]} for r in ARC_RAW]

WINOGRANDE_RAW = [
    {"qID": "1", "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
     "option1": "Sarah", "option2": "Maria", "answer": "1"},
    {"qID": "2", "sentence": "The trophy doesn't fit into the suitcase because the _ is too small.",
     "option1": "trophy", "option2": "suitcase", "answer": "2"},
]
WINOGRANDE_HUB = WINOGRANDE_RAW

LAMBADA_RAW = [{"text": "he looked at the door and then at the window . finally he opened the door"},
               {"text": "she said hello to her friend anna"}]
LAMBADA_HUB = LAMBADA_RAW

HELLASWAG_RAW = [  # upstream jsonl: integer label; the hub dataset has it as a string
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
     "ctx_b": "then", "ctx": "Then, the man writes over the snow. then", "split": "val", "split_type": "zeroshot",
     "label": 3, "endings": [", the man adds wax.", ", the man puts on a christmas coat.",
                              ", the man continues to remove the snow.", ", the man sprays the windshield."],
     "source_id": "activitynet~v_-1IBHYS3L-Y"},
    {"ind": 7, "activity_label": "Home and Garden", "ctx_a": "[header] How to grow roses [title] Pick a spot.",
     "ctx_b": "", "ctx": "[header] How to grow roses [title] Pick a spot.", "split": "val",
     "split_type": "indomain", "label": 0, "endings": ["Roses need sun [step] Water them.", "Roses are red.",
                                                        "Plant them in the dark.", "Use salt water."],
     "source_id": "wikihow~1"},
]
HELLASWAG_HUB = [{**r, "label": str(r["label"])} for r in HELLASWAG_RAW]

#: task -> (file under DIR/tasks/, upstream records, hub docs)
CASES: dict[str, tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = {
    "copa": ("copa/val.jsonl", COPA_RAW, COPA_HUB),
    "piqa": ("piqa/valid.jsonl", PIQA_RAW, PIQA_HUB),
    "arc_easy": ("ARC-Easy/ARC-Easy-Test.jsonl", ARC_RAW, ARC_HUB),
    "arc_challenge": ("arc_challenge/ARC-Challenge-Test.jsonl", ARC_RAW, ARC_HUB),
    "winogrande": ("winogrande/dev.jsonl", WINOGRANDE_RAW, WINOGRANDE_HUB),
    "lambada_openai": ("lambada_openai/lambada_test.jsonl", LAMBADA_RAW, LAMBADA_HUB),
    "hellaswag": ("hellaswag/hellaswag_val.jsonl", HELLASWAG_RAW, HELLASWAG_HUB),
}


def _write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_case(root: Path, name: str) -> Path:
    relative, raw, _ = CASES[name]
    path = _write_jsonl(root / "tasks" / relative, raw)
    if name == "piqa":
        path.with_name("valid-labels.lst").write_text("".join(f"{x}\n" for x in PIQA_LABELS))
    return path


def _builtin_task(name: str, docs: list[dict[str, Any]]):
    """lm-eval's built-in task from its installed YAML, its hub dataset replaced by ``docs`` (no network)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(LM_EVAL_TASKS / BUILTIN_YAML[name], resolve_func=True)
    for key in ("tag", "group"):
        cfg.pop(key, None)
    splits = {cfg.get(k) for k in ("training_split", "validation_split", "test_split")} - {None}
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict(
        {split: datasets.Dataset.from_list(docs) for split in splits})
    return ConfigurableTask(config=cfg)


def _requests(task) -> list[tuple]:
    task.build_all_requests(rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.request_type, i.args) for i in task.instances]


def _scoring(task) -> dict[str, Any]:
    cfg = task.config
    return {"output_type": cfg.output_type, "num_fewshot": cfg.num_fewshot, "metrics": task.aggregation().keys(),
            "higher_is_better": task.higher_is_better(), "target_delimiter": cfg.target_delimiter,
            "fewshot_delimiter": cfg.fewshot_delimiter, "version": task.VERSION}


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every local task built by lm-eval from the shipped YAMLs and upstream-format files."""
    root = tmp_path_factory.mktemp("data")
    for name in CASES:
        _write_case(root, name)
    plan = planning.plan_tasks(list(CASES), root, offline=True)
    assert set(plan.local) == set(CASES) and not plan.not_run and not plan.hub
    manager = configs.local_task_manager(configs.render_configs(plan.local, tmp_path_factory.mktemp("rendered")))
    return {name: configs.build_task(manager, name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_local_task_builds_the_builtin_requests(name: str, local_tasks: dict[str, Any]) -> None:
    local, builtin = local_tasks[name], _builtin_task(name, CASES[name][2])
    assert local.task_name == builtin.task_name == name
    assert _requests(local) == _requests(builtin)
    assert [local.doc_to_target(d) for d in local.eval_docs] == [builtin.doc_to_target(d) for d in builtin.eval_docs]
    assert _scoring(local) == _scoring(builtin)
    assert len(local.instances) > 0


@pytest.mark.parametrize("name", list(CASES))
def test_local_yaml_is_the_builtin_yaml_but_for_the_data(name: str) -> None:
    """Guard against drift when lm-eval changes its task definitions."""
    from lm_eval.tasks._yaml_loader import load_yaml

    def comparable(cfg: dict[str, Any]) -> dict[str, Any]:
        data_keys = {"dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split",
                     "test_split", "tag", "group", "fewshot_split"}
        # !function references differ only in their module file (copa_utils.py vs copa/utils.py)
        return {k: v.rsplit(".", 1)[-1] if isinstance(v, str) and v.startswith("/") else v
                for k, v in cfg.items() if k not in data_keys}

    local = load_yaml(configs.CONFIG_DIR / f"{name}.yaml", resolve_func=False)
    builtin = load_yaml(LM_EVAL_TASKS / BUILTIN_YAML[name], resolve_func=False)
    assert comparable(local) == comparable(builtin)
    split = "test_split" if builtin.get("test_split") else "validation_split"
    assert local[split] == builtin[split] == catalog.LOCAL_TASKS[name].split
    assert list(local["dataset_kwargs"]["data_files"]) == [catalog.LOCAL_TASKS[name].split]


def test_arc_hub_layout_reads_like_the_ai2_release(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "arc.jsonl", ARC_HUB)
    assert files.load_local_docs("arc_easy", path) == ARC_HUB
    assert files.load_local_docs("arc_easy", _write_jsonl(tmp_path / "ai2.jsonl", ARC_RAW)) == ARC_HUB


def test_hub_parquet_files_and_split_choice(tmp_path: Path) -> None:
    """allenai/ai2_arc ships train/validation/test parquet files: the test one is read, as lm-eval does."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder = tmp_path / "tasks" / "ARC-Easy"
    folder.mkdir(parents=True)
    for split, rows in (("train", ARC_HUB[:1]), ("validation", ARC_HUB[1:]), ("test", ARC_HUB)):
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}-00000-of-00001.parquet")
    path = files.find_task_file("arc_easy", tmp_path)
    assert path == folder / "test-00000-of-00001.parquet"
    assert files.load_local_docs("arc_easy", path) == ARC_HUB
    (folder / "ARC-Easy-Test.jsonl").write_text("")  # jsonl is preferred to parquet when both are there
    assert files.find_task_file("arc_easy", tmp_path) == folder / "ARC-Easy-Test.jsonl"
    with pytest.raises(DataError, match="ARC-Easy-Test.jsonl: no records"):
        planning.plan_tasks(["arc_easy"], tmp_path, offline=True)


def test_piqa_on_the_shared_data(shared_data_dir: Path) -> None:
    plan = planning.plan_tasks(["piqa"], shared_data_dir, offline=True)
    path, docs = plan.local["piqa"]
    assert path == shared_data_dir / "tasks" / "piqa" / "valid.jsonl"
    labels = (shared_data_dir / "tasks" / "piqa" / "valid-labels.lst").read_text().split()
    assert len(docs) == len(labels) == 1838
    assert [d["label"] for d in docs] == [int(x) for x in labels]
    assert {d["label"] for d in docs} == {0, 1}
    assert set(docs[0]) == {"goal", "sol1", "sol2", "label"}


# ------------------------------------------------------------------ metric keys


def test_acc_and_acc_norm_are_read_from_their_own_keys() -> None:
    output = {
        "results": {
            "piqa": {"alias": "piqa", "acc,none": 0.61, "acc_stderr,none": 0.011, "acc_norm,none": 0.64,
                     "acc_norm_stderr,none": 0.012},
            "copa": {"alias": "copa", "acc,none": 0.7, "acc_stderr,none": "N/A"},
            "lambada_openai": {"alias": "lambada_openai", "perplexity,none": 40.5, "perplexity_stderr,none": 1.5,
                               "acc,none": 0.3, "acc_stderr,none": 0.006},
        },
        "n-samples": {"piqa": {"original": 1838, "effective": 200}},
        "n-shot": {"piqa": 0},
    }
    piqa = task_results.result_from_lm_eval("piqa", output)
    assert piqa.metrics == {"acc": 0.61, "acc_stderr": 0.011, "acc_norm": 0.64, "acc_norm_stderr": 0.012}
    assert (piqa.headline_metric, piqa.headline) == ("acc_norm", 0.64)
    assert (piqa.n_samples, piqa.n_docs, piqa.num_fewshot) == (200, 1838, 0)
    copa = task_results.result_from_lm_eval("copa", output)
    assert copa.metrics == {"acc": 0.7, "acc_stderr": None} and (copa.headline_metric, copa.headline) == ("acc", 0.7)
    lambada = task_results.result_from_lm_eval("lambada_openai", output)
    assert lambada.headline == 0.3 and lambada.metrics["perplexity"] == 40.5
    assert task_results.parse_metrics({"exact_match,strict-match": 0.5}) == {"exact_match[strict-match]": 0.5}
    assert piqa.correct is None  # no logged samples
    samples = [{"doc_id": 1, "filter": "none", "acc": 0.0, "acc_norm": 1.0},
               {"doc_id": 0, "filter": "none", "acc": 1.0, "acc_norm": 1.0},
               {"doc_id": 2, "filter": "none", "acc": 1.0, "acc_norm": 0.0}]
    assert task_results.result_from_lm_eval("piqa", output | {"samples": {"piqa": samples}}).correct == "110"
    assert task_results.correct_of(samples, "acc") == "101"
    assert task_results.correct_of([{"doc_id": 0, "perplexity": 40.5}], "perplexity") is None
    # a task whose headline metric is missing falls back to acc, and says so
    assert task_results.headline_of("arc_easy", {"acc": 0.5}) == ("acc", 0.5)


def test_task_names_and_default(tmp_path: Path) -> None:
    assert files.expand_tasks(["lambada", "piqa", "lambada_openai"]) == ["lambada_openai", "piqa"]
    assert files.expand_tasks(["default"], tmp_path) == list(catalog.PAPER_TASKS)
    _write_case(tmp_path, "hellaswag")
    assert files.expand_tasks(["default"], tmp_path) == [*catalog.PAPER_TASKS, "hellaswag"]
    with pytest.raises(ValueError, match="unknown task 'mmlu'"):
        files.expand_tasks(["mmlu"])


# ------------------------------------------------------------------ missing and malformed data


def test_missing_data_offline_is_not_run_with_the_path(tmp_path: Path) -> None:
    plan = planning.plan_tasks(["copa", "arc_easy"], tmp_path, offline=True)
    assert not plan.local and not plan.hub
    reason = plan.not_run["copa"].reason
    assert plan.not_run["copa"].status == "not run"
    assert str(tmp_path / "tasks" / "copa" / "val.jsonl") in reason and "--data-dir" in reason
    assert str(tmp_path / "tasks" / "arc_easy" / "ARC-Easy-Test.jsonl") in plan.not_run["arc_easy"].reason
    results = runner.run_plan(plan, model=None, tokenizer=None)  # nothing to run: the model is never touched
    assert [r.status for r in results.values()] == ["not run", "not run"]
    assert f"sharvet fetch-data --out {tmp_path}" in reason  # COPA has a registry source, PIQA none
    piqa_reason = planning.plan_tasks(["piqa"], None, offline=True).not_run["piqa"].reason
    assert "no data dir given" in piqa_reason and "fetch-data" not in piqa_reason
    assert planning.plan_tasks(["piqa"], tmp_path, offline=False).hub == ["piqa"]  # online: lm-eval's built-in task


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("copa", [COPA_RAW[0], {**COPA_RAW[1], "question": "why"}], r"val.jsonl: record 1 \(line 2\) of task copa: "
         r"field 'question' must be 'cause' or 'effect'"),
        ("winogrande", [WINOGRANDE_RAW[0], {**WINOGRANDE_RAW[1], "answer": "3"}], r"record 1 \(line 2\).*'answer'"),
        ("arc_easy", [ARC_RAW[0], {**ARC_RAW[1], "answerKey": "E"}], r"record 1 \(line 2\).*answerKey"),
        ("hellaswag", [{**HELLASWAG_RAW[0], "endings": "one"}], r"record 0 \(line 1\).*endings"),
        ("lambada_openai", [LAMBADA_RAW[0], {"txt": "x"}], r"record 1 \(line 2\).*'text'"),
    ],
)
def test_malformed_record_is_named(tmp_path: Path, name: str, content: list[Any], message: str) -> None:
    _write_case(tmp_path, name)
    _write_jsonl(tmp_path / "tasks" / CASES[name][0], content)
    with pytest.raises(DataError, match=message):
        planning.plan_tasks([name], tmp_path, offline=True)


def test_bad_json_and_bad_labels_are_named(tmp_path: Path) -> None:
    path = _write_case(tmp_path, "piqa")
    path.write_text(json.dumps(PIQA_RAW[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"valid.jsonl: record 1 \(line 2\) is not valid JSON"):
        planning.plan_tasks(["piqa"], tmp_path, offline=True)
    _write_case(tmp_path, "piqa")
    path.with_name("valid-labels.lst").write_text("0\n2\n1\n")
    with pytest.raises(DataError, match=r"valid-labels.lst: line 2 \(label of record 1 .*\) is '2'"):
        planning.plan_tasks(["piqa"], tmp_path, offline=True)
    path.with_name("valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for the 3 records"):
        planning.plan_tasks(["piqa"], tmp_path, offline=True)


# ------------------------------------------------------------------ end to end on a tiny model


def _tiny_loaded() -> LoadedModel:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([json.dumps(r) for r in PIQA_RAW] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=1)
    return LoadedModel(LlamaForCausalLM(config).eval(), tokenizer, "tiny-random-llama")


def test_evaluate_end_to_end_on_a_tiny_model(tmp_path: Path) -> None:
    _write_case(tmp_path, "piqa")
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text(" = Title = \n" + "the cat sat on the mat .\n" * 20)
    out = tmp_path / "out" / "result.json"
    result = evaluate(_tiny_loaded(), ppl=["wikitext2", "c4"], tasks=["piqa", "copa"], data_dir=tmp_path,
                      context=32, limit=2, offline=True, bootstrap_iters=0, progress=False, json_path=out,
                      print_table=False)
    assert read_results(out) == json.loads(json.dumps(result))
    assert result["method"] == "original" and result["ratio"] == 1.0 and result["parameters"]["counted"] > 0
    assert result["perplexity"]["wikitext2"]["status"] == "ok" and result["perplexity"]["wikitext2"]["ppl"] > 1
    assert result["perplexity"]["c4"]["status"] == "not run" and "c4" in result["perplexity"]["c4"]["reason"]
    piqa = result["tasks"]["piqa"]
    assert piqa["status"] == "ok" and piqa["source"] == "local" and piqa["n_samples"] == 2 and piqa["n_docs"] == 3
    assert {"acc", "acc_norm"} <= set(piqa["metrics"]) and piqa["headline"] == piqa["metrics"]["acc_norm"]
    assert piqa["num_fewshot"] == 0 and piqa["limit"] == 2
    # each document's outcome, so that two models can be compared on the same questions
    assert len(piqa["correct"]) == 2 and piqa["correct"].count("1") / 2 == piqa["headline"]
    assert result["tasks"]["copa"]["status"] == "not run"
    assert set(result["versions"]) >= {"torch", "transformers", "lm_eval", "sharvet"} and result["seed"] == 0
    assert result["wall_time_s"] >= 0


def test_eval_command_from_the_cli_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The argparse wiring the CLI uses, on a model folder: loads it, runs PIQA on 2 documents, writes JSON."""
    import argparse

    from sharvet.cli import _common
    from sharvet.evaluation.results import add_eval_arguments, eval_command

    loaded = _tiny_loaded()
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    _write_case(tmp_path / "data", "piqa")
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    _common(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args([str(tmp_path / "model"), "--ppl", "", "--tasks", "piqa,lambada", "--limit", "2",
                              "--offline", "--data-dir", str(tmp_path / "data"), "--json", str(out), "--no-progress"])
    assert eval_command(args) == 3  # lambada_openai did not run: its own exit code, the results still written
    result = read_results(out)
    assert result["tasks"]["piqa"]["n_samples"] == 2 and result["tasks"]["lambada_openai"]["status"] == "not run"
    assert result["perplexity"] == {} and result["model"] == str((tmp_path / "model").resolve())
    printed = capsys.readouterr().out
    assert "piqa" in printed and "acc_norm" in printed and "not run: no local data for lambada_openai" in printed
