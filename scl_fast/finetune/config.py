"""The fine-tuning config: pre-training's sections (model, data, train) plus one section for the task's data.

``python -m scl_fast.finetune TASK --init CKPT`` starts from the preset of the checkpoint's own run, takes the model
section and the tokenizer from the checkpoint's config (the weights must fit), then applies the task's optimisation
preset, a ``--config`` file and ``--section.key value`` overrides, in that order. Without ``--init`` the model is the
preset's, from random weights.

Presets. ``paper`` and ``compact``: the SCL release's fine-tuning settings (``scl/config.py`` of IIGROUP/SCL, METER's
code base), per task: learning rate, the multiplier of the fusion layers (METER's lr_mult_cross_modal, here
``train.head_lr_mult``), the multiplier of the new classifier (METER's lr_mult_head, ``<task>.classifier_lr_mult``),
resolution, warm-up and 10 epochs as steps at a global batch of 512 (NLVR2, MSR-VTT: 256):

==================  ======  ==========  ===========  ==========  =======  ======  =========================
task                lr      fusion x    classifier   resolution  warm-up  steps   dataset (10 epochs)
==================  ======  ==========  ===========  ==========  =======  ======  =========================
vqa                 5e-6    10          50           384         0.1      8,670   VQAv2 train, 443,757 q.
nlvr2               1e-5    10          10           288         0.1      3,374   86,373 statements
retrieval           5e-6    5           (ITM: x5)    384         0.1      11,060  COCO Karpathy train+restval
video_retrieval     5e-6    5           (ITM: x5)    224, 4 fr.  0.05     7,030   MSR-VTT 9k, 180k captions
==================  ======  ==========  ===========  ==========  =======  ======  =========================

(METER's own configs differ in two places: fusion x5 for VQA and NLVR2, and VQA at 576 px.) Retrieval trains
ITC (weight 0.5, the release's "con") and ITM with ITC-hard negatives (weight 1; the release adds METER's rank loss
over 15 sampled texts, which ITM with hard negatives replaces here) and re-ranks each query's ITC top k with ITM
(the release's candidate_N: 256 for COCO). ``demo``: minutes on 2 CPU cores, measured (see each task's numbers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from scl_fast.config import Config, from_dict, load_file, parse_args, preset
from scl_fast.errors import ConfigError
from scl_fast.model.config import ModelConfig

TASKS = ("vqa", "nlvr2", "retrieval", "video_retrieval")


@dataclass(kw_only=True)
class VQAConfig:
    """VQAv2: the official questions and annotations JSON files and the COCO images they ask about."""

    train_questions: str | None = None
    """v2_OpenEnded_mscoco_train2014_questions.json; several files joined by '::' (train::val for a test-dev
    submission). None, with every other path None: the synthetic demo, written on first use."""
    train_annotations: str | None = None
    """v2_mscoco_train2014_annotations.json, '::'-joined in the order of train_questions."""
    val_questions: str | None = None
    """The questions evaluated after training: val2014 (accuracy) or test-dev2015 (predictions only). None with a
    real training set: no evaluation."""
    val_annotations: str | None = None
    """Their annotations; None: predictions only (RUN_DIR/vqa_predictions.json, the submission format)."""
    images: str | None = None
    """COCO image root holding train2014/, val2014/ and test2015/."""
    max_answers: int = 3129
    """Size of the answer vocabulary (METER, ViLT: 3,129)."""
    min_answer_count: int = 9
    """An answer enters the vocabulary when it is the multiple-choice answer of at least this many training
    questions (ViLT: 9, over train+val)."""
    classifier_lr_mult: float = 50.0
    """LR multiplier of the answer classifier (the SCL release: 50)."""
    demo_train: int = 2000
    """Demo: training images (3 questions each)."""
    demo_val: int = 200
    """Demo: evaluation images (3 questions each)."""

    def __post_init__(self) -> None:
        _at_least("vqa", 1, max_answers=self.max_answers, min_answer_count=self.min_answer_count,
                  demo_train=self.demo_train, demo_val=self.demo_val)
        _positive("vqa", classifier_lr_mult=self.classifier_lr_mult)


@dataclass(kw_only=True)
class NLVR2Config:
    """NLVR2: the official JSONL files and the pair images they name."""

    train: str | None = None
    """train.json (one record per line). None, with val and images None: the synthetic demo."""
    val: str | None = None
    """dev.json or test1.json, evaluated after training."""
    images: str | None = None
    """Image root holding train/<directory>/, dev/ and test1/."""
    classifier_lr_mult: float = 10.0
    """LR multiplier of the true/false classifier (the SCL release: 10)."""
    demo_train: int = 3000
    """Demo: training statements (two images each)."""
    demo_val: int = 500
    """Demo: evaluation statements."""

    def __post_init__(self) -> None:
        _at_least("nlvr2", 1, demo_train=self.demo_train, demo_val=self.demo_val)
        _positive("nlvr2", classifier_lr_mult=self.classifier_lr_mult)


@dataclass(kw_only=True)
class RetrievalConfig:
    """Image-text retrieval: Karpathy's COCO or Flickr30K split file and the images."""

    karpathy: str | None = None
    """dataset_coco.json or dataset_flickr30k.json. None, with images None: the synthetic demo."""
    images: str | None = None
    """Image root: COCO's folder holding train2014/ and val2014/, or Flickr30K's image folder."""
    train_splits: tuple[str, ...] = ("train", "restval")
    """Karpathy splits trained on (Flickr30K has no restval)."""
    val_split: str = "test"
    """Karpathy split evaluated after training (5k COCO / 1k Flickr30K test images)."""
    itm_k: int = 256
    """ITC candidates re-ranked by ITM per query (the SCL release: 256 COCO, 128 Flickr30K); 0 = ITC only."""
    demo_train: int = 1500
    """Demo: training images (5 captions each)."""
    demo_test: int = 100
    """Demo: test images (5 captions each)."""

    def __post_init__(self) -> None:
        _at_least("retrieval", 0, itm_k=self.itm_k)
        _at_least("retrieval", 1, demo_train=self.demo_train, demo_test=self.demo_test)


@dataclass(kw_only=True)
class VideoRetrievalConfig:
    """Video-text retrieval: MSR-VTT's 1k-A split."""

    train_csv: str | None = None
    """MSRVTT_train.9k.csv (the training videos). None, with every other path None: the synthetic demo."""
    data_json: str | None = None
    """MSRVTT_data.json (the release's captions of every video)."""
    test_csv: str | None = None
    """MSRVTT_JSFUSION_test.csv (the 1k-A test pairs), evaluated after training."""
    videos: str | None = None
    """Folder of the videos, <video_id>.<video_ext>."""
    video_ext: str = "mp4"
    """Extension of the video files."""
    itm_k: int = 128
    """ITC candidates re-ranked by ITM per query (the SCL release: 128); 0 = ITC only."""
    demo_train: int = 400
    """Demo: training clips (5 captions each)."""
    demo_test: int = 100
    """Demo: test clips (1 caption each, the 1k-A protocol)."""

    def __post_init__(self) -> None:
        _at_least("video_retrieval", 0, itm_k=self.itm_k)
        _at_least("video_retrieval", 1, demo_train=self.demo_train, demo_test=self.demo_test)


def _at_least(section: str, low: int, **values: int) -> None:
    for name, value in values.items():
        if value < low:
            raise ValueError(f"{section}.{name} must be >= {low}, got {value}")


def _positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{section}.{name} must be > 0, got {value}")


@dataclass(kw_only=True)
class FinetuneConfig(Config):
    """One fine-tuning run: pre-training's sections, the checkpoint it starts from, and (in each subclass) the task
    section."""

    init: str | None = None
    """Checkpoint whose weights start the run: a run folder (its newest checkpoint) or RUN_DIR/checkpoints/step_N
    of pre-training (or of another fine-tuning run: its backbone). Its config's model section and tokenizer are
    this run's. None = random weights."""


@dataclass(kw_only=True)
class VQARun(FinetuneConfig):
    """Fine-tuning on VQAv2."""

    vqa: VQAConfig = field(default_factory=VQAConfig)
    """VQAv2 files, answer vocabulary, classifier LR."""


@dataclass(kw_only=True)
class NLVR2Run(FinetuneConfig):
    """Fine-tuning on NLVR2."""

    nlvr2: NLVR2Config = field(default_factory=NLVR2Config)
    """NLVR2 files, classifier LR."""


@dataclass(kw_only=True)
class RetrievalRun(FinetuneConfig):
    """Fine-tuning for image-text retrieval (COCO, Flickr30K)."""

    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    """Karpathy split file, images, ITM re-ranking."""


@dataclass(kw_only=True)
class VideoRetrievalRun(FinetuneConfig):
    """Fine-tuning for video-text retrieval (MSR-VTT 1k-A)."""

    video_retrieval: VideoRetrievalConfig = field(default_factory=VideoRetrievalConfig)
    """MSR-VTT files, videos, ITM re-ranking."""


RUNS: dict[str, type[FinetuneConfig]] = {"vqa": VQARun, "nlvr2": NLVR2Run, "retrieval": RetrievalRun,
                                         "video_retrieval": VideoRetrievalRun}

# The SCL release's settings (module docstring): lr, fusion multiplier, resolution, frames, warm-up, steps.
_PAPER = {"vqa": (5e-6, 10.0, 384, 1, 0.1, 8_670), "nlvr2": (1e-5, 10.0, 288, 1, 0.1, 3_374),
          "retrieval": (5e-6, 5.0, 384, 1, 0.1, 11_060), "video_retrieval": (5e-6, 5.0, 224, 4, 0.05, 7_030)}
# Demo runs, from scratch or from a demo pre-training run, a minute or two each on 2 quiet CPU cores: lr, fusion
# multiplier, classifier multiplier, steps, batch. Measured: lr 3e-4 beat 1e-3 and 1e-4 on VQA from either start;
# NLVR2 from scratch leaves chance after ~800 steps (0.59 after 1200, 0.55 after 400).
_DEMO = {"vqa": (3e-4, 1.0, 3.0, 700, 32), "nlvr2": (3e-4, 1.0, 3.0, 1200, 32),
         "retrieval": (3e-4, 1.0, 1.0, 500, 32), "video_retrieval": (3e-4, 1.0, 1.0, 400, 16)}


def finetune_preset(task: str, name: str, pretrained: dict[str, Any] | None = None) -> FinetuneConfig:
    """The complete config of ``task`` at preset ``name``; ``pretrained``: the config of the ``--init``
    checkpoint, whose model section and tokenizer replace the preset's."""
    if task not in RUNS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    base = preset(name)
    model, data = base.model, base.data
    if pretrained is not None:
        model = from_dict(ModelConfig, pretrained.get("model", {}))
        saved = pretrained.get("data", {})
        data = dataclasses.replace(data, tokenizer=saved.get("tokenizer", data.tokenizer),
                                   max_text_len=saved.get("max_text_len", data.max_text_len))
    if task in ("retrieval", "video_retrieval"):
        # ITC + ITM with ITC-hard negatives; the masked objectives are pre-training's only
        model = dataclasses.replace(model, loss=dataclasses.replace(
            model.loss, mlm_weight=0.0, scl_weight=0.0, itm_weight=1.0, itc_weight=1.0 if task == "video_retrieval"
            else 0.5, itm_negatives="hard"))
    # VQA answers and NLVR2 statements name left and right: a flipped image would contradict them
    flip = task in ("retrieval", "video_retrieval")
    section: dict[str, Any] = {}
    if name == "demo":
        lr, fusion_mult, classifier_mult, steps, batch = _DEMO[task]
        train = dataclasses.replace(base.train, lr=lr, head_lr_mult=fusion_mult, steps=steps, warmup_frac=0.1,
                                    ckpt_every=100, log_every=25)
        data = dataclasses.replace(data, batch_size=batch, hflip=flip)
        if task in ("vqa", "nlvr2"):
            section["classifier_lr_mult"] = classifier_mult
        if task in ("retrieval", "video_retrieval"):
            # ITC ranking only: after a few hundred steps on the demo's near-duplicate captions ITM is still at chance
            # on hard negatives (loss 0.69) and re-ranking the ITC top 16 by it lost R-sum (measured: 389 -> 318
            # images, 259 -> 194 videos, from the demo pre-training run); --<task>.itm_k K turns it on
            section["itm_k"] = 0
    else:
        lr, fusion_mult, size, frames, warmup, steps = _PAPER[task]
        train = dataclasses.replace(base.train, lr=lr, head_lr_mult=fusion_mult, steps=steps, warmup_frac=warmup,
                                    ckpt_every=1000)
        data = dataclasses.replace(data, image_size=size, frames=frames if frames > 1 else data.frames, hflip=flip)
    cls = RUNS[task]
    cfg = cls(preset=base.preset, model=model, data=data, train=train)
    if section:
        setattr(cfg, task, dataclasses.replace(getattr(cfg, task), **section))
    return cfg


def _scan(argv: list[str], key: str) -> str | None:
    """The value of ``--key V`` / ``--key=V`` in ``argv`` (last wins), else None."""
    found = None
    for i, arg in enumerate(argv):
        if arg == f"--{key}" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(f"--{key}="):
            found = arg.split("=", 1)[1]
    return found


def parse_finetune_args(task: str, argv: list[str]) -> FinetuneConfig:
    """The resolved config of ``python -m scl_fast.finetune TASK ARGV`` (``--help`` prints every option).

    Raises:
        ConfigError: an unknown task or option, a bad file or value.
        CheckpointError: ``--init`` names no checkpoint, or a corrupt one.
    """
    from scl_fast import checkpoint

    from .model import resolve

    if task not in RUNS:
        import difflib

        close = difflib.get_close_matches(task, TASKS, n=1)
        raise ConfigError(f"unknown task {task!r}{f'; did you mean {close[0]!r}?' if close else ''} (tasks: "
                          f"{', '.join(TASKS)})")
    file = _scan(argv, "config")
    file_data = load_file(file) if file else {}
    init = _scan(argv, "init") or file_data.get("init")
    pretrained = checkpoint.load_config(resolve(init)) if init and "-h" not in argv and "--help" not in argv else None
    if pretrained is not None and _scan(argv, "preset") is None and "preset" not in file_data:
        argv = ["--preset", pretrained.get("preset", "demo"), *argv]  # the checkpoint's size, not the demo's
    usage = (f"usage: python -m scl_fast.finetune {task} [--init CKPT_OR_RUN_DIR] [--config FILE] "
             f"[--preset {{demo,compact,paper}}] [--section.key VALUE ...]")
    return parse_args(argv, prog=f"python -m scl_fast.finetune {task}", usage=usage,
                      make_preset=lambda name: finetune_preset(task, name, pretrained))


def task_of(config: dict[str, Any]) -> str:
    """The task of a saved fine-tuning config (the one task section it has)."""
    found = [t for t in TASKS if t in config]
    if len(found) != 1:
        raise ConfigError("not a fine-tuning run's config: it has no task section (vqa, nlvr2, retrieval, "
                          "video_retrieval)")
    return found[0]


def config_from_dict(config: dict[str, Any]) -> FinetuneConfig:
    """A saved fine-tuning config (a checkpoint's ``config.json``) as its typed class."""
    return from_dict(RUNS[task_of(config)], config)


