"""Helper of ``test_distributed.py`` (not a test): the first step's gradients of one fixed global batch.

Run with ``torchrun --nproc_per_node W`` (each rank takes its W-th of the batch through the Trainer's DDP module)
or as one process (the whole batch). The randomness of the step (masks, kept patches) is drawn once for the
global batch and sliced per rank, so both runs compute the very same losses; ITM and MLM are off because their
normalisation is per rank by design (in-batch negatives, mean over the rank's masked tokens). Rank 0 saves the
gradients (after DDP's all-reduce) to OUT.

    python tests/train/ddp_grads.py OUT [--section.key VALUE ...]
"""

from __future__ import annotations

import dataclasses
import sys

import torch


def main() -> None:
    from scl_fast.config import parse_args
    from scl_fast.data import build_loader
    from scl_fast.trainer import Trainer

    out, argv = sys.argv[1], sys.argv[2:]
    cfg = parse_args(argv)
    trainer = Trainer(cfg, device="cpu", progress=False)
    try:
        info = trainer.info
        data_cfg = dataclasses.replace(cfg.data, num_workers=0, batch_size=cfg.data.batch_size * info.world_size)
        batches = iter(build_loader(data_cfg, "val"))
        batch = next(batches)  # the same global batch on every rank
        batches.close()  # release the loader now, not in a destructor at exit
        model = trainer.model
        steps = model.draw_step_inputs(batch.pixels, batch.input_ids, batch.attention_mask, batch.special_mask,
                                       generator=torch.Generator().manual_seed(123))
        per = len(batch) // info.world_size
        rows = slice(info.rank * per, (info.rank + 1) * per)
        local = dataclasses.replace(
            steps, mlm_ids=steps.mlm_ids[rows], scl_ids=steps.scl_ids[rows], patch_noise=steps.patch_noise[rows],
            itm_labels=steps.itm_labels[rows], itm_neg_index=steps.itm_neg_index[rows] % per,
            itm_noise=steps.itm_noise[rows], mlm_positions=steps.mlm_positions[:0], mlm_targets=steps.mlm_targets[:0])
        model.train()
        result = trainer.step_module(batch.pixels[rows], batch.input_ids[rows], batch.attention_mask[rows],
                                     batch.special_mask[rows], step_inputs=local)
        result.loss.backward()
        if info.is_main:
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            torch.save({"grads": grads, "world_size": info.world_size, "batch": len(batch)}, out)
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
