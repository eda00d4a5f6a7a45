"""all_gather_with_grad on 2 gloo ranks: DDP with the gathered contrastive losses equals one process on all data.

Two CPU processes (torch.multiprocessing.spawn, gloo, a free port) each hold B samples of a small two-tower
model. The loss is ITC + SCL as the model computes them: ``info_nce`` over features gathered from every rank
(ITC with a learnable temperature; SCL with tau = 0.03 and stop-gradient targets). After DDP-style averaging
of the parameter gradients over the ranks, they must equal the gradients of one process on the 2B samples.
The same run also uses the release's gather (all_gather, then the local rows put back with their gradient):
its gradients come out 1/world_size too small, and the test checks that it fails the comparison.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scl_kernels import all_gather_with_grad, info_nce
from tests.utils import rel_err

WORLD = 2
B = 5  # samples per rank
EVEN = (B, B)
UNEVEN = (B - 1, B + 1)  # one rank lost a sample: the gather must still line up
SCL_TAU = 0.03


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _naive_gather(x: torch.Tensor) -> torch.Tensor:
    """The public release's gather: every rank's rows without gradient, the local rows put back with theirs. The
    backward therefore sees only this rank's own loss, not the other ranks' losses of these rows."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, 0)


class _TwoTower(torch.nn.Module):
    """Vision and text projections, a fusion layer that recovers the vision feature from masked vision + text,
    and a learnable ITC temperature: the loss structure of ITC + SCL-vision at toy size."""

    def __init__(self) -> None:
        super().__init__()
        self.vision = torch.nn.Linear(16, 8)
        self.text = torch.nn.Linear(12, 8)
        self.fusion = torch.nn.Linear(16, 8)
        self.temperature = torch.nn.Parameter(torch.tensor(0.07))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, keep: torch.Tensor, gather) -> torch.Tensor:
        v = self.vision(img)  # (N, 8)
        t = self.text(txt)
        recovered = self.fusion(torch.cat([self.vision(img * keep), t], dim=1))  # masked vision + text
        itc = info_nce(gather(v), gather(t), self.temperature)
        scl = info_nce(gather(recovered), gather(v), SCL_TAU, detach_b=True)  # stop-gradient targets
        return 0.5 * itc + scl


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    img = torch.randn(n, 16, generator=g)
    txt = torch.randn(n, 12, generator=g)
    keep = (torch.rand(n, 16, generator=g) < 0.2).float()  # SCL keeps 20%
    return img, txt, keep


def _model() -> _TwoTower:
    torch.manual_seed(0)
    return _TwoTower()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        result = {}
        for name, gather, split in (("correct", all_gather_with_grad, EVEN), ("naive", _naive_gather, EVEN),
                                    ("uneven", all_gather_with_grad, UNEVEN)):  # fmt: skip
            start = sum(split[:rank])
            img, txt, keep = (x[start : start + split[rank]] for x in _data(WORLD * B))
            model = _model()
            loss = model(img, txt, keep, gather)
            loss.backward()
            grads = _grads(model)
            for g in grads.values():  # DDP: average the gradients over the ranks
                dist.all_reduce(g)
                g /= WORLD
            result[name] = {"loss": loss.detach(), "grads": grads}
        # the collective itself: rank r's rows get the sum over ranks of the gradient each rank sends them
        x = torch.full((3, 4), float(rank + 1), requires_grad=True)
        weight = torch.arange(WORLD * 3 * 4, dtype=torch.float32).reshape(WORLD * 3, 4) * (rank + 1)
        gathered = all_gather_with_grad(x)
        (gathered * weight).sum().backward()
        result["gathered"] = gathered.detach()
        result["x_grad"] = x.grad
        # ranks with different row counts (2 and 3): rank order, the gradient of each rank's own rows
        y = torch.full((2 + rank, 4), float(rank + 1), requires_grad=True)
        gathered = all_gather_with_grad(y)
        (gathered * weight[: gathered.shape[0]]).sum().backward()
        result["uneven_gathered"] = gathered.detach()
        result["uneven_grad"] = y.grad
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _single_process() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = _model()
    loss = model(*_data(WORLD * B), lambda x: x)
    loss.backward()
    return loss.detach(), _grads(model)


@pytest.mark.parametrize("run", ["correct", "uneven"])
def test_ddp_with_all_gather_with_grad_equals_one_process(two_ranks: list[dict], run: str) -> None:
    """5 + 5 samples, and 4 + 6 (a rank that skipped a bad sample): the loss and the DDP-averaged gradients equal
    one process's on all 10."""
    loss, grads = _single_process()
    for rank, res in enumerate(two_ranks):
        got = res[run]
        assert rel_err(got["loss"], loss) < 1e-6, f"rank {rank}: loss {got['loss']} != {loss}"
        for k, g in grads.items():
            err = rel_err(got["grads"][k], g)
            assert err < 1e-5, f"rank {rank}: grad {k} rel err {err:.2e}"


def test_naive_gather_fails_the_same_comparison(two_ranks: list[dict]) -> None:
    """The release's gather gives the same loss but gradients 1/world_size too small: the check above catches it."""
    loss, grads = _single_process()
    got = two_ranks[0]["naive"]
    assert rel_err(got["loss"], loss) < 1e-6  # the forward is the same
    errs = {k: rel_err(got["grads"][k], g) for k, g in grads.items() if k != "temperature"}
    # a feature's gradient misses the other rank's loss: for these weights, the averaged gradient is ~half
    assert all(e > 0.1 for e in errs.values()), errs  # vs the 1e-5 the correct gather meets


def test_all_gather_with_grad_collective(two_ranks: list[dict]) -> None:
    """Forward: rank order; backward: rank r gets sum over ranks of the gradient rows [3r, 3r+3)."""
    expected_rows = torch.cat([torch.full((3, 4), float(r + 1)) for r in range(WORLD)])
    base = torch.arange(WORLD * 3 * 4, dtype=torch.float32).reshape(WORLD * 3, 4)
    total = base * sum(r + 1 for r in range(WORLD))  # every rank's weight, summed
    for rank, res in enumerate(two_ranks):
        torch.testing.assert_close(res["gathered"], expected_rows, rtol=0, atol=0)
        torch.testing.assert_close(res["x_grad"], total[rank * 3 : (rank + 1) * 3], rtol=0, atol=0)


def test_all_gather_with_grad_uneven_collective(two_ranks: list[dict]) -> None:
    """2 rows on rank 0, 3 on rank 1: 5 rows in rank order; each rank gets the summed gradient of its own rows."""
    expected_rows = torch.cat([torch.full((2 + r, 4), float(r + 1)) for r in range(WORLD)])
    base = torch.arange(WORLD * 3 * 4, dtype=torch.float32).reshape(WORLD * 3, 4)[:5]
    total = base * sum(r + 1 for r in range(WORLD))
    for rank, res in enumerate(two_ranks):
        torch.testing.assert_close(res["uneven_gathered"], expected_rows, rtol=0, atol=0)
        start = 0 if rank == 0 else 2
        torch.testing.assert_close(res["uneven_grad"], total[start : start + 2 + rank], rtol=0, atol=0)


def test_all_gather_with_grad_is_identity_without_process_group() -> None:
    assert not dist.is_initialized()
    x = torch.randn(4, 3, requires_grad=True)
    assert all_gather_with_grad(x) is x
