"""The fused step schedule gives the naive five-pass schedule's losses and gradients; backends agree; fix 1.

Float64 with dropout off and the model's ops on their PyTorch references (``ops.reference_ops``): what is tested
is the schedule (which passes are shared, how the fusion batch is assembled), so the only differences left are
summation orders: losses agree to ~1e-15 and gradients to ~1e-14 relative (the tiny model's features are not
collapsed, see ``tests.model.tiny_config``), asserted at 1e-12 and 1e-10. The fp32 test of the production ops
keeps fp32's tolerances (losses 1e-5).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from scl_fast.model.attention import set_attn_backend
from scl_fast.model.ops import reference_ops
from scl_fast.model.scl import LOSS_NAMES, SCLModel, StepInputs
from tests.model import tiny_batch, tiny_config
from tests.utils import rel_err

LOSS_TOL, GRAD_TOL = 1e-12, 1e-10  # float64
FP32_LOSS_TOL = 1e-5


@pytest.fixture(autouse=True)
def _reference_ops(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.originalname.endswith("_default_ops"):  # the production path: the installed fused ops
        yield
        return
    with reference_ops():
        yield


def _step(model: SCLModel, batch: tuple[torch.Tensor, ...], steps, schedule: str
          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(*batch, schedule=schedule, step_inputs=steps)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.losses.items()}, grads, out.loss.detach()


def _assert_same_step(a, b, label: str) -> None:
    """Equal losses and gradients; a parameter whose true gradient is 0 (the key biases: softmax ignores a
    per-row constant) is compared against the largest gradient's scale instead of its own rounding noise."""
    (la, ga, ta), (lb, gb, tb) = a, b
    for k in LOSS_NAMES:
        if not la[k].abs() > 0 and lb[k].abs() == 0:  # a loss with weight 0 is reported as 0 by both
            continue
        assert torch.isfinite(la[k]) and la[k].abs() > 0, f"{label}: loss {k} = {la[k]}"
        err = rel_err(la[k], lb[k])
        assert err < LOSS_TOL, f"{label}: loss {k} differs: {la[k].item()} vs {lb[k].item()} (rel {err:.2e})"
    assert rel_err(ta, tb) < LOSS_TOL
    assert ga.keys() == gb.keys(), f"{label}: parameters with a gradient differ: {ga.keys() ^ gb.keys()}"
    scale = max(g.norm().item() for g in gb.values())
    # a true zero (the key biases) is rounding noise: ~1e-16 absolute in float64, so compared with the scale
    floor = 1e-4 if next(iter(gb.values())).dtype == torch.float64 else 1e-6
    for name, g in gb.items():
        assert torch.isfinite(ga[name]).all(), f"{label}: non-finite gradient of {name}"
        err = (ga[name] - g).norm().item() / max(g.norm().item(), floor * scale)
        assert err < GRAD_TOL, f"{label}: gradient of {name} differs (rel {err:.2e}, norm {g.norm().item():.2e})"


@pytest.mark.parametrize(
    ("frames", "loss_kw"),
    [
        (1, {}),
        (4, {}),
        (1, {"itm_negatives": "hard"}),
        (4, {"itm_negatives": "hard"}),
        (4, {"scl_loss": "cosine"}),
        (1, {"mlm_weight": 0.0}),
    ],
    ids=["image", "video4", "image-hard-negatives", "video4-hard-negatives", "video4-cosine", "image-no-mlm"],
)
def test_fused_equals_naive(frames: int, loss_kw: dict) -> None:
    cfg = tiny_config(**loss_kw)
    torch.manual_seed(1)
    model = SCLModel(cfg).double().train()
    batch = tiny_batch(cfg, batch=6, frames=frames, dtype=torch.float64, seed=frames)
    steps = model.draw_step_inputs(*batch, generator=torch.Generator().manual_seed(7))
    assert (steps.mlm_targets != -100).any()
    fused = _step(model, batch, steps, "fused")
    naive = _step(model, batch, steps, "naive")
    _assert_same_step(fused, naive, f"frames={frames} {loss_kw}")
    # The comparison can see a segment paired wrongly: SCL's masked text rolled by one sample moves the losses by
    # far more than the tolerance (features not collapsed).
    wrong = _step(model, batch, dataclasses.replace(steps, scl_ids=steps.scl_ids.roll(1, 0)), "fused")
    assert rel_err(wrong[2], fused[2]) > 1e5 * LOSS_TOL, "a wrong pairing must show in the losses"
    # every parameter trains (the key biases aside, whose gradient is 0 by construction)
    grads = fused[1]
    unused = "mlm_head." if cfg.loss.mlm_weight == 0 else None  # a loss with weight 0 trains nothing
    dead = [n for n, p in model.named_parameters() if (n not in grads or (grads[n].abs().max() == 0 and
            not n.endswith("key.bias"))) and not (unused and n.startswith(unused))]
    assert not unused or not any(n.startswith(unused) for n in grads), "the MLM head trained with mlm_weight 0"
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("frames", [1, 4])
def test_fused_equals_naive_fp32_default_ops(frames: int) -> None:
    """The production path: fp32, the installed fused ops (C++ / Triton where present), sdpa attention.

    fp32 rounding alone moves some gradients of this tiny random model by ~5e-4 (InfoNCE at T = 0.03 amplifies
    it, in both schedules alike), so gradients follow the house rule against a float64 reference: the fused
    schedule's error at most 3x the naive schedule's (ARCHITECTURE.md: gradients 3x looser) + 1e-5."""
    cfg = tiny_config(attn_backend="sdpa")
    torch.manual_seed(1)
    model = SCLModel(cfg).train()
    ref_model = copy.deepcopy(model).double()
    batch = tiny_batch(cfg, batch=6, frames=frames, seed=frames)
    steps = model.draw_step_inputs(*batch, generator=torch.Generator().manual_seed(7))
    fused_losses, fused, _ = _step(model, batch, steps, "fused")
    naive_losses, naive, _ = _step(model, batch, steps, "naive")
    with reference_ops():
        ref_losses, ref, _ = _step(ref_model, tuple(t.double() if t.is_floating_point() else t for t in batch),
                                   steps, "naive")
    for k in LOSS_NAMES:
        assert rel_err(fused_losses[k], ref_losses[k]) < FP32_LOSS_TOL, k
        assert rel_err(fused_losses[k], naive_losses[k]) < FP32_LOSS_TOL, k
    assert fused.keys() == naive.keys() == ref.keys()
    for name, g in ref.items():
        if name.endswith("key.bias"):  # true gradient 0: nothing relative to compare
            continue
        err, base = rel_err(fused[name], g), rel_err(naive[name], g)
        assert err <= 3 * base + 1e-5, f"frames={frames}: gradient of {name}: fused {err:.2e}, naive {base:.2e}"


def test_same_generator_same_step() -> None:
    """Without explicit step inputs, the same generator seed gives both schedules the same randomness."""
    cfg = tiny_config()
    model = SCLModel(cfg).double()
    batch = tiny_batch(cfg, batch=4, dtype=torch.float64)
    out = [model(*batch, schedule=s, generator=torch.Generator().manual_seed(3)).losses for s in ("fused", "naive")]
    for k in LOSS_NAMES:
        assert rel_err(out[0][k], out[1][k]) < LOSS_TOL, k
    other = model(*batch, schedule="fused", generator=torch.Generator().manual_seed(4)).losses
    assert rel_err(other["mlm"], out[0]["mlm"]) > 1e-6  # a different seed is a different step


def test_zero_weight_skips_the_loss() -> None:
    """scl_weight 0 runs neither SCL pass: the masked-vision encoder is never called, the loss is reported 0."""
    cfg = tiny_config(scl_weight=0.0)
    model = SCLModel(cfg).double()
    batch = tiny_batch(cfg, batch=4, dtype=torch.float64)
    steps = model.draw_step_inputs(*batch, generator=torch.Generator().manual_seed(0))
    calls: list[bool] = []
    model.vision.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs.get("keep") is not None),
                                           with_kwargs=True)
    for schedule in ("fused", "naive"):
        calls.clear()
        out = model(*batch, schedule=schedule, step_inputs=steps)
        assert out.losses["scl"].item() == 0.0 and "scl_vision" not in out.metrics
        assert not any(calls), f"{schedule}: the masked-vision pass ran with scl_weight 0"
        w = cfg.loss
        expect = w.itm_weight * out.losses["itm"] + w.mlm_weight * out.losses["mlm"] + w.itc_weight * out.losses["itc"]
        assert rel_err(out.loss, expect) < 1e-12
        assert len(calls) == (1 if schedule == "fused" else 3)  # intact image: once vs once per ITC/ITM/MLM pass


@pytest.mark.parametrize("frames", [1, 3])
def test_backend_flip_same_module(frames: int) -> None:
    """eager <-> sdpa on the SAME instance (timm's fused-attention test): same losses and gradients."""
    cfg = tiny_config()
    model = SCLModel(cfg).double()
    batch = tiny_batch(cfg, batch=4, frames=frames, dtype=torch.float64)
    steps = model.draw_step_inputs(*batch, generator=torch.Generator().manual_seed(2))
    set_attn_backend(model, "eager")
    eager = _step(model, batch, steps, "fused")
    set_attn_backend(model, "sdpa")
    assert all(m.attn_backend == "sdpa" for m in model.modules() if hasattr(m, "attn_backend"))
    sdpa = _step(model, batch, steps, "fused")
    _assert_same_step(sdpa, eager, f"sdpa vs eager, frames={frames}")


def test_scl_vision_gradient_reaches_the_vision_encoder() -> None:
    """Fix 1: features are normalised over the feature dim, so for an image batch (F = 1) the vision half of SCL
    alone trains the vision encoder. (The release normalised over the frame axis: sign(x), zero gradient.)"""
    cfg = tiny_config(itm_weight=0.0, mlm_weight=0.0, itc_weight=0.0)
    model = SCLModel(cfg).double()
    batch = tiny_batch(cfg, batch=4, frames=1, dtype=torch.float64)
    terms: list[tuple[torch.Tensor, torch.Tensor]] = []
    scl_terms = model._scl_terms

    def spy(*features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        terms.append(scl_terms(*features))
        return terms[-1]

    model._scl_terms = spy  # type: ignore[method-assign]
    out = model(*batch, generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == set(LOSS_NAMES) and out.losses["itm"].item() == 0.0
    (_, vision_term), = terms
    params = [p for n, p in model.vision.named_parameters() if n != "temporal_embedding"]
    grads = torch.autograd.grad(vision_term, params, allow_unused=True)
    norms = [0.0 if g is None else g.norm().item() for g in grads]
    assert all(n > 1e-8 for n in norms), f"vision parameters without SCL-vision gradient: {norms}"
    assert torch.isfinite(out.loss)


def _rank_step(rank: int, world: int, init: str, out_dir: str) -> None:
    """One rank of ``test_two_ranks_equal_one_process``: half the batch, ITC + SCL, gradients averaged as DDP
    does, written to ``out_dir``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, batch, steps = _two_rank_setup()
        n = batch[0].shape[0] // world
        rows = slice(rank * n, (rank + 1) * n)
        local = _slice_steps(steps, rows)
        with reference_ops():
            out = model(*(t[rows] for t in batch), step_inputs=local)
            out.loss.backward()
        grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        for g in grads.values():
            dist.all_reduce(g)
            g /= world  # DDP's average
        torch.save({"grads": grads, "losses": out.losses}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _two_rank_setup() -> tuple[SCLModel, tuple[torch.Tensor, ...], StepInputs]:
    cfg = tiny_config(itm_weight=0.0, mlm_weight=0.0)
    torch.manual_seed(3)
    model = SCLModel(cfg).double()
    batch = tiny_batch(cfg, batch=6, frames=2, dtype=torch.float64, seed=5)
    steps = model.draw_step_inputs(*batch, generator=torch.Generator().manual_seed(9))
    return model, batch, steps


def _slice_steps(steps: StepInputs, rows: slice) -> StepInputs:
    """The per-row randomness of a step (text masks, patch keys) for a slice of the batch."""
    return dataclasses.replace(steps, scl_ids=steps.scl_ids[rows], patch_noise=steps.patch_noise[rows],
                               mlm_ids=steps.mlm_ids[rows])


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    """Fix 2: ITC and SCL on 2 gloo ranks of B/2 pairs (features all-gathered, gradient summed over ranks, then
    DDP-averaged) give the losses and gradients of one process on all B pairs."""
    import torch.multiprocessing as mp

    # fork: the children inherit the imported modules (spawn re-imports torch: ~30 s on a loaded 2-core box)
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_rank_step, args=(2, init, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    model, batch, steps = _two_rank_setup()
    with reference_ops():
        ref = _step(model, batch, steps, "fused")
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for k in ("itc", "scl"):
            assert rel_err(got["losses"][k], ref[0][k]) < 1e-10, (rank, k)
        assert got["grads"].keys() == ref[1].keys()
        for name, g in ref[1].items():
            if name.endswith("key.bias"):
                continue
            assert rel_err(got["grads"][name], g) < 1e-8, f"rank {rank}: gradient of {name}"
