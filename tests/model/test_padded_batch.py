"""A batch padded to its fixed size: the padding rows join no loss, as anchors or as negatives.

The loader pads a batch short of rows (bad samples skipped) with dummy rows marked ``valid = False``, so that every
step has one shape per frame count. The losses of the padded batch must be those of its real rows alone.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scl_fast.model.ops import reference_ops
from scl_fast.model.scl import LOSS_NAMES, SCLModel
from tests.model import tiny_batch, tiny_config
from tests.utils import rel_err


@pytest.mark.parametrize("schedule", ["fused", "naive"])
@pytest.mark.parametrize(("frames", "loss_kw"), [(1, {}), (4, {"itm_negatives": "hard"}), (2, {"scl_loss": "cosine"})],
                         ids=["image", "video4-hard", "video2-cosine"])
def test_padding_rows_join_no_loss(schedule: str, frames: int, loss_kw: dict) -> None:
    cfg = tiny_config(**loss_kw)
    torch.manual_seed(2)
    real, pad = 5, 3
    with reference_ops():
        model = SCLModel(cfg).double().train()
        batch = tiny_batch(cfg, batch=real + pad, frames=frames, dtype=torch.float64, seed=frames)
        pixels, ids, attention, special = batch
        pixels[real:] = 0.0  # the loader's padding rows: blank pixels, [CLS] [SEP] and padding
        ids[real:] = 0
        ids[real:, 0], ids[real:, 1] = 101, 102
        attention[real:] = False
        attention[real:, :2] = True
        special[real:] = True
        valid = torch.arange(real + pad) < real
        steps = model.draw_step_inputs(*batch, generator=torch.Generator().manual_seed(5), valid=valid)
        # uniform negatives from the real rows only, so the real rows alone can be given the same step
        neg = (torch.arange(real + pad) + 1) % real
        steps = dataclasses.replace(steps, itm_neg_index=neg)
        padded = model(*batch, schedule=schedule, step_inputs=steps)
        rows = slice(0, real)
        kept = steps.mlm_positions < real * ids.shape[1]
        alone = dataclasses.replace(
            steps, mlm_ids=steps.mlm_ids[rows], scl_ids=steps.scl_ids[rows], patch_noise=steps.patch_noise[rows],
            itm_labels=steps.itm_labels[rows], itm_neg_index=neg[rows], itm_noise=steps.itm_noise[rows],
            mlm_positions=steps.mlm_positions[kept], mlm_targets=steps.mlm_targets[kept], valid=None)
        reference = model(*(t[rows] for t in batch), schedule=schedule, step_inputs=alone)
    assert not (steps.mlm_targets[~kept] != -100).any(), "a padding row's token was chosen for MLM"
    for k in LOSS_NAMES:
        assert reference.losses[k].abs() > 0, k
        assert rel_err(padded.losses[k], reference.losses[k]) < 1e-12, (k, padded.losses[k], reference.losses[k])
