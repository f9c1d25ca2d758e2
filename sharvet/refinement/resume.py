"""Resume conflicts found before any model is loaded: a ``--resume`` whose settings differ from the run it
continues fails in its first second, not after the teacher and student are loaded (the data half of the
fingerprint, which needs the tokenised set, is still checked by the trainer)."""
from __future__ import annotations

from pathlib import Path

from .state import latest_checkpoint, read_state
from .trainer import RefineConfig, trajectory_settings


def check_resume(cfg: RefineConfig, resume: bool) -> None:
    """Raise when ``cfg`` cannot continue the checkpoints in ``cfg.output_dir`` (or would overwrite them)."""
    folder = latest_checkpoint(Path(cfg.output_dir))
    if folder is None:
        return
    if not resume:
        raise FileExistsError(f"{cfg.output_dir} holds checkpoints of an earlier run: add --resume to continue it, "
                              "or pick another --refine-output")
    saved = read_state(folder).get("fingerprint", {}).get("config", {})
    now = trajectory_settings(cfg)
    diff = sorted(k for k in now if saved.get(k) != now[k])
    if diff:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise ValueError(f"cannot resume {folder}: it was written with other settings ({shown}); "
                         "use the same flags, or another --refine-output")
