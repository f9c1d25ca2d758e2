"""The shipped lm-eval task configurations (``sharvet/evaluation/tasks/``), filled in for local data.

Those YAML files are copies of lm-eval's built-in ones (``tests/test_tasks.py`` checks that they build the same
requests) that point ``dataset_path: json`` at the prepared file. They are rendered into a temporary folder and
loaded with ``TaskManager(include_path=..., include_defaults=False)``, so task names and result keys stay lm-eval's.
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

#: The shipped lm-eval task configurations (YAML plus the utils modules they reference).
CONFIG_DIR = Path(__file__).with_name("tasks")


def render_configs(local: Mapping[str, tuple[Path, list[dict[str, Any]]]], folder: Path) -> Path:
    """Write each task's prepared docs and its YAML (placeholders filled) plus the utils modules into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for module in CONFIG_DIR.glob("*_utils.py"):
        shutil.copy(module, folder / module.name)
    for name, (_, docs) in local.items():
        data_file = folder / f"{name}.jsonl"
        with data_file.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)
        template = string.Template((CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        text = template.substitute(data_file=json.dumps(str(data_file)), cache_dir=json.dumps(str(folder / "hf")))
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return folder


def local_task_manager(folder: Path) -> TaskManager:
    """A TaskManager that knows only the rendered local configurations (no scan of lm-eval's own tasks)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False)


def build_task(manager: TaskManager, name: str) -> Task:
    """The task object (its dataset loaded), so that data problems show before the model runs."""
    return manager.load([name])["tasks"][name]

