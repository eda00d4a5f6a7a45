"""The downstream tasks, each a ``scl_fast.task.Task`` that the pre-training trainer runs."""

from __future__ import annotations

from typing import Any

from .base import FinetuneTask
from .nlvr2 import NLVR2Task
from .retrieval import RetrievalTask, VideoRetrievalTask
from .vqa import VQATask

TASK_CLASSES: dict[str, type[FinetuneTask]] = {"vqa": VQATask, "nlvr2": NLVR2Task, "retrieval": RetrievalTask,
                                               "video_retrieval": VideoRetrievalTask}


def make_task(cfg: Any, **kw: Any) -> FinetuneTask:
    """The task a fine-tuning config is for (the one task section it has)."""
    from ..config import RUNS

    name = next(t for t, cls in RUNS.items() if type(cfg) is cls)
    return TASK_CLASSES[name](cfg, **kw)


__all__ = ["TASK_CLASSES", "FinetuneTask", "NLVR2Task", "RetrievalTask", "VQATask", "VideoRetrievalTask",
           "make_task"]
