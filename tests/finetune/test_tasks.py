"""Must show 1: each task's fixture, in its released format, goes reader -> loader -> model -> loss -> metric
through the pre-training trainer (in-process, the tiny model, two steps)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scl_fast import checkpoint as ckpt
from scl_fast.data.host import CLIP_MEAN, CLIP_STD
from scl_fast.finetune.config import parse_finetune_args
from scl_fast.finetune.data import PAD_LABEL
from scl_fast.finetune.tasks import make_task
from scl_fast.model import SCLModel
from scl_fast.trainer import Trainer

from .conftest import section_args, tiny_run


def _train(task: str, args: list[str]) -> tuple[Trainer, dict]:
    cfg = parse_finetune_args(task, args)
    trainer = Trainer(cfg, task=make_task(cfg), progress=False)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return trainer, summary


def _rgb(pixels: torch.Tensor) -> torch.Tensor:
    """Mean colour (0-255) of CLIP-normalised (..., 3, H, W) pixels."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((pixels * std + mean) * 255).mean(dim=(-1, -2))


def test_vqa_fixture_reader_to_metric(vqa_files: dict[str, str], tmp_path: Path) -> None:
    args = tiny_run(tmp_path, *section_args("vqa", vqa_files), "--vqa.min_answer_count", "1", "--vqa.max_answers",
                    "3")
    cfg = parse_finetune_args("vqa", args)
    task = make_task(cfg)
    batch = next(iter(task.build_loader("train", rank=0, world_size=1, seed=0)))
    real = batch.valid
    assert batch.rows[~real].eq(-1).all() and batch.labels[~real].eq(0).all()  # padding rows: no example, no target
    by_row = dict(zip(batch.rows[real].tolist(), batch.labels[real], strict=True))
    examples, _ = task.examples("train")
    assert {examples[r].uid for r in by_row} == {"10", "11"}  # the empty question and the missing image skipped
    expected = {"10": [1.0, 0.0, 0.6], "11": [0.0, 1.0, 0.0]}  # vocabulary red, 2, blue
    for row, target in by_row.items():
        assert target.tolist() == pytest.approx(expected[examples[row].uid])

    trainer, summary = _train("vqa", args)
    assert math.isfinite(summary["final_losses"]["bce"]) and summary["final_losses"]["bce"] > 0
    val = summary["vqa"]["val"]
    assert val["questions"] == 2 and val["skipped"] == 0 and 0 <= val["accuracy"] <= 1
    assert val["baseline_answer"] == "red" and val["baseline"] == pytest.approx(0.3 / 2)  # 1 "red" of 10 on q90
    bad = summary["data_stats"]["bad"]
    assert bad["bad_label"] == 1 and bad["unknown_answer"] == 1
    assert bad["empty_caption"] >= 1 and bad["missing_media"] >= 1
    assert (trainer.run_dir / "vqa_predictions.json").is_file()


def test_nlvr2_fixture_pairs_left_and_right(nlvr2_files: dict[str, str], tmp_path: Path) -> None:
    args = tiny_run(tmp_path, *section_args("nlvr2", nlvr2_files))
    cfg = parse_finetune_args("nlvr2", args)
    task = make_task(cfg)
    loader = task.build_loader("train", rank=0, world_size=1, seed=0)
    batch = next(iter(loader))
    # 4 dealt, train-3 lost its right image: 3 pairs and a padding row (static shapes: B rows, the loader's width)
    assert batch.pixels.shape[:3] == (4, 2, 3) and batch.valid.tolist() == [True, True, True, False]
    assert batch.input_ids.shape[1] == cfg.data.max_text_len and batch.labels[3] == PAD_LABEL
    real = batch.valid
    rgb = _rgb(batch.pixels[real])  # (3, 2, 3)
    assert (rgb[:, 0, 0] > 150).all() and (rgb[:, 0, 2] < 80).all(), rgb  # left: the red -img0.png
    assert (rgb[:, 1, 2] > 150).all() and (rgb[:, 1, 0] < 80).all(), rgb  # right: the blue -img1.png
    examples, _ = task.examples("train")
    rows = batch.rows[real].tolist()
    assert batch.labels[real].tolist() == [int(examples[r].label) for r in rows]
    assert "train-3-1-0" not in {examples[r].uid for r in rows}
    assert loader.stats.bad["missing_media"] == 1

    _, summary = _train("nlvr2", args)
    val = summary["nlvr2"]["val"]
    assert val["statements"] == 4 and 0 <= val["accuracy"] <= 1
    assert val["baseline_answer"] == "True" and val["baseline"] == pytest.approx(0.5)  # dev labels F, T, T, F
    assert summary["data_stats"]["bad"]["bad_json"] == 1


@pytest.mark.parametrize("task", ["retrieval", "video_retrieval"])
def test_retrieval_fixtures_reader_to_metric(task: str, karpathy_files: dict[str, str], msrvtt_files: dict[str, str],
                                             tmp_path: Path) -> None:
    files = karpathy_files if task == "retrieval" else msrvtt_files
    args = tiny_run(tmp_path, *section_args(task, files), f"--{task}.itm_k", "2")
    trainer, summary = _train(task, args)
    assert set(summary["final_losses"]) == {"total", "itc", "itm"}  # the masked objectives are off
    kind, gallery, pairs = ("image", 3, 6) if task == "retrieval" else ("video", 3, 3)
    result = summary[task]
    assert result[f"n_{kind}"] == {"pairs": pairs, "gallery": gallery}
    for direction in (f"text->{kind}", f"{kind}->text"):
        m = result[direction]
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1 and 1 <= m["MdR"] <= gallery
    assert result[f"text->{kind}"]["chance_R@1"] == pytest.approx(1 / 3)
    assert 0 < result["val"]["chance_rsum"] < 600 and result["val"]["itm_k"] == 2


def test_init_loads_a_pretraining_checkpoint(vqa_files: dict[str, str], tmp_path: Path) -> None:
    args = tiny_run(tmp_path, *section_args("vqa", vqa_files), "--vqa.min_answer_count", "1")
    cfg = parse_finetune_args("vqa", args)
    pretrained = SCLModel(cfg.model)
    torch.nn.init.normal_(pretrained.fusion.text_proj.weight)  # unlike any fresh initialisation
    from scl_fast.config import to_dict

    path = ckpt.save(tmp_path / "pre", 5, model_state=pretrained.state_dict(), train_state={},
                     config=to_dict(cfg), world_size=1, keep=1)
    cfg = parse_finetune_args("vqa", [*args, "--init", str(tmp_path / "pre")])
    assert cfg.init == str(tmp_path / "pre")
    model = make_task(cfg).build_model()
    for name, value in pretrained.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
    assert path.is_dir()


@pytest.mark.parametrize("task", ["vqa", "nlvr2"])
def test_padding_rows_weigh_nothing_in_the_loss(task: str, tmp_path: Path) -> None:
    """A training batch the loader padded to its fixed size (``valid`` False, label 0 or the ignore index): the
    classifier losses equal those of the real rows alone, whatever the padding rows' logits."""
    from types import SimpleNamespace


    g = torch.Generator().manual_seed(0)
    classes = 5 if task == "vqa" else 2
    logits = torch.randn(6, classes, generator=g, dtype=torch.float64) * 3
    if task == "vqa":
        labels = torch.rand(6, classes, generator=g, dtype=torch.float64).round(decimals=1)
        labels[4:] = 0
    else:
        labels = torch.tensor([0, 1, 1, 0, PAD_LABEL, PAD_LABEL])
    valid = torch.tensor([True] * 4 + [False] * 2)
    t = make_task(parse_finetune_args(task, tiny_run(tmp_path)))

    def loss_of(lg: torch.Tensor, lb: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        batch = SimpleNamespace(pixels=None, input_ids=None, attention_mask=None, labels=lb, valid=v)
        return t.forward(lambda *_: lg, None, batch, g)

    real, real_parts = loss_of(logits[:4], labels[:4], None)
    poisoned = logits.clone()
    poisoned[4:] = 1e4 * torch.randn(2, classes, generator=g, dtype=torch.float64)
    for lg in (logits, poisoned):
        padded, parts = loss_of(lg, labels, valid)
        assert abs(padded.item() - real.item()) <= 1e-12 * abs(real.item()), (padded, real)
        for name, value in real_parts.items():
            assert abs(parts[name].item() - value.item()) <= 1e-12 * max(1.0, abs(value.item())), name


def test_nlvr2_pairs_from_batches_of_two_text_widths() -> None:
    """Evaluation pads each loader batch to its own longest caption, and a pair one loader delivered a batch late
    joins rows of two batches: the joined text takes the wider width and keeps every token of both."""
    from types import SimpleNamespace

    from scl_fast.data import Batch
    from scl_fast.finetune.data import ExampleLoader

    def one_row(key: str, tokens: list[int], width: int) -> Batch:
        ids = torch.zeros(1, width, dtype=torch.long)
        ids[0, :len(tokens)] = torch.tensor(tokens)
        attention = ids != 0
        return Batch(torch.full((1, 1, 3, 4, 4), float(len(tokens))), ids, attention, ~attention, [key], [key])

    short, long = one_row("a", [101, 7, 102], 3), one_row("b", [101, 8, 9, 10, 102], 5)
    pending = [{"a": (short, 0), "b": (long, 0)}, {"a": (long, 0), "b": (short, 0)}]
    joined = ExampleLoader._collate(SimpleNamespace(pad_id=0), ["a", "b"], pending)
    assert joined.input_ids.tolist() == [[101, 7, 102, 0, 0], [101, 8, 9, 10, 102]]
    assert joined.attention_mask.sum(1).tolist() == [3, 5] and joined.special_mask[0, 3:].all()
    assert joined.pixels.shape == (2, 2, 3, 4, 4) and joined.pixels[0, :, 0, 0, 0].tolist() == [3.0, 5.0]
