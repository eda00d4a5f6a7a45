"""``python -m scl_fast.evaluate TASK``: score a fine-tuned checkpoint, or a VQA predictions file, as JSON.

    python -m scl_fast.evaluate vqa --ckpt RUN_DIR [--data QUESTIONS.json --annotations ANNOTATIONS.json --images DIR]
    python -m scl_fast.evaluate nlvr2 --ckpt RUN_DIR [--data dev.json --images DIR]
    python -m scl_fast.evaluate retrieval --ckpt RUN_DIR [--data dataset_coco.json --images DIR] [--itm_k 256]
    python -m scl_fast.evaluate video_retrieval --ckpt RUN_DIR [--data MSRVTT_JSFUSION_test.csv --videos DIR]
    python -m scl_fast.evaluate vqa --predictions PRED.json --questions Q.json --annotations A.json

Without data options the checkpoint's own evaluation split is scored (a demo run's demo). Any option of the run's
config can be changed as ``--section.key VALUE`` (e.g. ``--retrieval.val_split val``). The result: VQA accuracy
(official formula) and its baselines, NLVR2 accuracy, retrieval R@1/5/10 both ways with the R-sum, video
retrieval R@1/5/10 and the median rank; VQA also writes its predictions in the submission format
(``--out_dir``/vqa_predictions.json: ``[{"question_id": int, "answer": str}]``, test-dev's when the questions file
is test-dev's, without annotations).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from scl_fast.errors import ConfigError

from .config import TASKS

# --data / --images / --videos: the section keys they set, per task
_DATA = {"vqa": "val_questions", "nlvr2": "val", "retrieval": "karpathy", "video_retrieval": "test_csv"}
_MEDIA = {"vqa": "images", "nlvr2": "images", "retrieval": "images", "video_retrieval": "videos"}


def main(argv: list[str]) -> dict[str, Any]:
    """``argv``: the task, then its options (see the module docstring)."""
    from scl_fast import checkpoint
    from scl_fast.config import from_dict, overrides_to_dict

    from .config import config_from_dict, task_of
    from .tasks import make_task
    from .vqa_eval import score_files

    task_name, rest = argv[0], argv[1:]
    if task_name not in TASKS:
        raise ConfigError(f"unknown task {task_name!r}; choose one of {', '.join(TASKS)}")
    parser = argparse.ArgumentParser(prog=f"python -m scl_fast.evaluate {task_name}",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="fine-tuned checkpoint folder (RUN_DIR/checkpoints/step_N) or run folder")
    parser.add_argument("--data", help=f"the evaluation file (sets {task_name}.{_DATA[task_name]})")
    parser.add_argument(f"--{_MEDIA[task_name]}", dest="media", help=f"sets {task_name}.{_MEDIA[task_name]}")
    if task_name == "vqa":
        parser.add_argument("--questions", help="questions file (same as --data)")
        parser.add_argument("--annotations", help="annotations file (none: test-dev, predictions only)")
        parser.add_argument("--predictions", help="score this submission-format file instead of a checkpoint")
        parser.add_argument("--out_dir", default=".", help="where vqa_predictions.json is written")
    if task_name in ("retrieval", "video_retrieval"):
        parser.add_argument("--itm_k", type=int, default=None, help="ITM re-ranking of the ITC top k (0 = off)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the run's data.batch_size")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args, extra = parser.parse_known_args(rest)

    if getattr(args, "predictions", None) is not None:
        if not (args.questions or args.data) or not args.annotations:
            raise ConfigError("--predictions needs --questions and --annotations")
        result = score_files(args.predictions, args.questions or args.data, args.annotations)
        return _emit(result, args.out)
    if args.ckpt is None:
        alternative = " (or --predictions, --questions and --annotations)" if task_name == "vqa" else ""
        raise ConfigError(f"give --ckpt RUN_DIR{alternative}")
    path = checkpoint.latest_checkpoint(args.ckpt) if checkpoint.list_checkpoints(args.ckpt) else args.ckpt
    checkpoint.verify(path)
    saved = checkpoint.load_config(path)
    if task_of(saved) != task_name:
        raise ConfigError(f"{path} is a {task_of(saved)} run, not {task_name}")
    cfg = config_from_dict(saved)
    section: dict[str, Any] = {}
    if args.data or getattr(args, "questions", None):
        section[_DATA[task_name]] = args.data or args.questions
        if task_name == "vqa":
            section["val_annotations"] = args.annotations  # None: predictions only
    if args.media:
        section[_MEDIA[task_name]] = args.media
    if getattr(args, "itm_k", None) is not None:
        section["itm_k"] = args.itm_k
    overrides: dict[str, Any] = {task_name: section, "data": {"num_workers": 0}}
    if args.batch_size is not None:
        overrides["data"]["batch_size"] = args.batch_size
    pairs = list(zip(extra[::2], extra[1::2], strict=False))
    if len(extra) % 2 or any(not k.startswith("--") for k, _ in pairs):
        raise ConfigError(f"expected --section.key VALUE pairs, got {' '.join(extra)}")
    cfg = from_dict(type(cfg), overrides, base=cfg)
    if pairs:
        cfg = from_dict(type(cfg), overrides_to_dict([(k[2:], v) for k, v in pairs], type(cfg)), base=cfg)

    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    task = make_task(cfg, load_init=False)
    weights = checkpoint.load_weights(path)
    model = task.model_for(weights)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise checkpoint.CheckpointError(f"{path} does not fit its own config: "
                                         f"{' '.join(str(err).split())[:300]}") from None
    model.to(device).eval()
    result = {"checkpoint": str(path), "task": task_name}
    result |= task.evaluate_model(model, device=device, out_dir=getattr(args, "out_dir", None))
    return _emit(result, args.out)


def _emit(result: dict[str, Any], out: str | None) -> dict[str, Any]:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return result
