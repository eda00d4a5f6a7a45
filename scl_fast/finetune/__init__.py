"""Downstream fine-tuning and evaluation of SCL models: VQAv2, NLVR2, image-text and video-text retrieval.

``python -m scl_fast.finetune TASK`` trains a task (``__main__.py``); ``python -m scl_fast.evaluate TASK --ckpt``
scores a run (``evaluate.py``). Each task is a ``scl_fast.task.Task`` run by pre-training's trainer, on the
pre-training model, data pipeline and kernels:

- ``config.py``: the task sections and presets (the SCL release's fine-tuning settings), the command line;
- ``formats/``: readers of the released formats (VQAv2 JSON, NLVR2 JSONL, Karpathy splits, MSR-VTT 1k-A);
- ``demo.py``: a synthetic demo of each task in its real format;
- ``data.py``: examples to the pre-training loader (manifests) and back as labelled batches;
- ``heads.py``, ``model.py``: the classifiers on the pooled feature, ``--init``;
- ``tasks/``: each task's labels, loss and metric;
- ``vqa_eval.py``: the official VQA answer normalisation and accuracy;
- ``table.py``: the README's table (every task from a demo pre-training run, without SCL, from scratch).
"""

from .config import TASKS

__all__ = ["TASKS"]
