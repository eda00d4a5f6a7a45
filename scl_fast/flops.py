"""FLOPs of one training step (forward + backward) of both step schedules, counted on the meta device.

``python -m scl_fast.flops --preset paper [--batch 16] [--frames 1] [--length 50]`` builds the model on the
``meta`` device (no memory, no arithmetic: shapes only), runs one step of each schedule under
``torch.utils.flop_counter.FlopCounterMode`` and prints a per-part table and, as its last line,
``flops ratio (schedule/naive): X.XX``. ``count_step_flops`` returns the same numbers (the trainer's MFU).

Only what FlopCounterMode knows is counted (matmuls, convolutions, attention); element-wise work and the
contrastive losses (O(B^2 d), negligible next to the encoders) are not.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from scl_fast.errors import run_cli
from scl_fast.model.config import ModelConfig, model_preset
from scl_fast.model.scl import SCLModel

PARTS: tuple[str, ...] = ("vision", "text", "fusion", "heads")
SCHEDULES: tuple[str, ...] = ("fused", "naive")


def _step_inputs(model: SCLModel, cfg: ModelConfig, batch: int, frames: int, length: int
                 ) -> tuple[tuple[torch.Tensor, ...], Any]:
    """Meta-device batch of full-length captions ([CLS] w ... w [SEP]) and the step's randomness, drawn on the
    CPU (the masked-token count is data dependent) then moved to meta."""
    size = cfg.vision.image_size
    ids = torch.randint(cfg.text.vocab_size, (batch, length))  # values are irrelevant on meta: shapes only
    attention = torch.ones(batch, length, dtype=torch.bool)
    special = torch.zeros(batch, length, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    pixels = torch.empty(batch, frames, 3, size, size, device="meta")
    steps = model.draw_step_inputs(pixels, ids, attention, special, generator=torch.Generator().manual_seed(0))
    return (pixels, ids.to("meta"), attention.to("meta"), special.to("meta")), steps.to("meta")


def _by_part(counter: FlopCounterMode) -> dict[str, int]:
    """Forward FLOPs per top-level part. The modality projections run outside ``FusionEncoder.forward``
    (``project_text`` / ``project_image``), so they are added to the fusion part explicitly; "heads" is the
    rest (ITC/ITM/MLM heads)."""
    counts = {k: sum(per_op.values()) for k, per_op in counter.get_flop_counts().items()}
    out = {part: counts.get(f"SCLModel.{part}", 0) for part in PARTS[:-1]}
    out["fusion"] += counts.get("SCLModel.fusion.text_proj", 0) + counts.get("SCLModel.fusion.image_proj", 0)
    out["total"] = counts.get("Global", 0)
    out["heads"] = out["total"] - sum(out[p] for p in PARTS[:-1])
    return out


def count_step_flops(cfg: ModelConfig, batch: int, frames: int = 1, length: int = 50,
                     schedules: Sequence[str] = SCHEDULES) -> dict[str, Any]:
    """FLOPs of one training step of each schedule at ``batch`` pairs of ``frames`` frames and ``length`` tokens.

    Counting runs the step on the meta device (seconds per schedule: every op is dispatched in Python), so a
    caller that needs one number (the trainer's MFU: ``count_step_flops(cfg, b, f, schedules=[cfg.schedule])``)
    should count only its own schedule.

    Returns:
        ``{"fused": {"forward": {part: flops, ..., "total": flops}, "backward": flops, "step": flops},
        "naive": {...}, "ratio": fused step / naive step}``, parts being vision, text, fusion and heads
        (ITC/ITM/MLM heads and losses). ``step`` = forward + backward, what MFU divides by. The backward is a
        total only: FlopCounterMode's module attribution is not reliable in the backward pass. "ratio" only
        when both schedules are counted.
    """
    if not schedules or any(s not in SCHEDULES for s in schedules):
        raise ValueError(f"schedules must be a non-empty subset of {SCHEDULES}, got {schedules!r}")
    if batch < 2:
        raise ValueError(f"batch must be >= 2 (ITM needs in-batch negatives), got {batch}")
    cfg = copy.deepcopy(cfg)
    cfg.init_text = cfg.init_vision = None
    cfg.attn_backend = "eager"  # plain matmuls: counted the same way whichever kernel a real run uses
    model = SCLModel(cfg, device="meta")
    model.train()
    inputs, steps = _step_inputs(model, cfg, batch, frames, length)
    out: dict[str, Any] = {}
    for schedule in schedules:
        with FlopCounterMode(display=False) as fwd:
            loss = model(*inputs, schedule=schedule, step_inputs=steps).loss
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        model.zero_grad(set_to_none=True)
        forward = _by_part(fwd)
        backward = sum(sum(per_op.values()) for k, per_op in bwd.get_flop_counts().items() if k == "Global")
        out[schedule] = {"forward": forward, "backward": backward, "step": forward["total"] + backward}
    if "fused" in out and "naive" in out:
        out["ratio"] = out["fused"]["step"] / out["naive"]["step"]
    return out


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: forward GFLOPs per part, forward and forward+backward totals, per schedule."""
    head = " | ".join(f"{p} fwd" for p in PARTS)
    lines = [f"| schedule | {head} | total fwd | total fwd+bwd |", "|---" + "|---:" * (len(PARTS) + 2) + "|"]
    for schedule in SCHEDULES:
        f = result[schedule]["forward"]
        cells = " | ".join(f"{f[p] / 1e9:.1f}" for p in PARTS)
        lines.append(f"| {schedule} | {cells} | {f['total'] / 1e9:.1f} | {result[schedule]['step'] / 1e9:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m scl_fast.flops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper", choices=("demo", "compact", "paper"))
    parser.add_argument("--batch", type=int, default=16, help="pairs per step (the paper: 16 per GPU)")
    parser.add_argument("--frames", type=int, default=1, help="1 = images, 4 = the paper's videos")
    parser.add_argument("--length", type=int, default=50, help="caption tokens (the paper's max: 50)")
    args = parser.parse_args(argv)
    cfg = model_preset(args.preset)
    result = count_step_flops(cfg, args.batch, args.frames, args.length)
    print(f"preset {args.preset}, batch {args.batch}, frames {args.frames}, {args.length} tokens, "
          f"{cfg.vision.image_size} px: GFLOPs of one training step (FlopCounterMode, meta device)")
    print(format_table(result))
    print(f"flops ratio (schedule/naive): {result['ratio']:.2f}")
    return result


if __name__ == "__main__":
    run_cli(main)
