"""Child process of ``test_launch.py``'s offline launch test: runs attention calls under the offline driver and
prints one JSON document with what each launch passed to the launcher.

Run without ``TRITON_INTERPRET`` and with ``SCL_KERNELS_AUTOTUNE=0``:
``python -c "from tests.kernels.launch_scenario import main; main()"``. The calls are run three times: with
``TunedLaunch``'s direct launches off (every launch through ``JITFunction.run``), then on twice (the first pass
remembers each specialisation, the second launches them all directly). Each call varies one thing that Triton
specialises on or that the kernels branch on: pointer alignment, lengths divisible by 16, masks, dropout seeds,
dtype, cross-attention; one call runs with a launch-enter hook set, which must get each launch's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
from triton import knobs

import scl_kernels
from scl_kernels import _dispatch
from scl_kernels._offline import Launch, counting_jit_runs, offline_driver
from scl_kernels.attention import launch as attn_launch


def _qkv(b: int, h: int, lq: int, lk: int, d: int, dtype: torch.dtype, offset: int = 0,
         kv_heads: int | None = None) -> list[torch.Tensor]:  # fmt: skip
    """(B, H, L, D) views of (B, L, H, D) buffers, as the model passes them; ``offset`` elements shift q's start
    (an fp16 offset of 1 leaves it 2 bytes off Triton's 16-byte alignment); K/V with ``kv_heads`` heads."""
    q = torch.randn(b * lq * h * d + offset, dtype=dtype)[offset:].view(b, lq, h, d).transpose(1, 2)
    k, v = (torch.randn(b, lk, kv_heads or h, d, dtype=dtype).transpose(1, 2) for _ in range(2))
    return [t.requires_grad_(True) for t in (q, k, v)]


HOOK_SAW: list[str] = []  # the kernel names a launch-enter hook read from its launch metadata


def _hook(metadata: object) -> None:
    HOOK_SAW.append(metadata.get()["name"])  # a LazyDict, as Triton's profiler (proton) reads it


def _call(lq: int = 50, lk: int = 50, dtype: torch.dtype = torch.float16, offset: int = 0, seed: int = 0,
          key_mask: bool = False, hooked: bool = False, kv_heads: int | None = None,
          **options: object) -> Callable[[], None]:  # fmt: skip
    def run() -> None:
        torch.manual_seed(seed)  # the dropout Philox pair masked_attention draws
        q, k, v = _qkv(2, 2, lq, lk, 32, dtype, offset, kv_heads)
        km = None
        if key_mask:
            km = torch.ones(2, lk, dtype=torch.bool)
            km[1, lk - 9 :] = False
        if hooked:
            knobs.runtime.launch_enter_hook.add(_hook)
        try:
            out = scl_kernels.masked_attention(q, k, v, key_mask=km, backend="triton", **options)
            torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        finally:
            if hooked:
                knobs.runtime.launch_enter_hook.remove(_hook)

    return run


CALLS: dict[str, Callable[[], None]] = {
    "key mask": _call(key_mask=True),
    "key mask again, a launch hook set": _call(key_mask=True, hooked=True),
    "q 2 bytes off alignment": _call(key_mask=True, offset=1),
    "L 64 (multiples of 16)": _call(lq=64, lk=64, key_mask=True),
    "frames": _call(lq=48, lk=48, frames=2),
    "dropout": _call(key_mask=True, dropout_p=0.1, seed=3),
    "dropout, another seed": _call(key_mask=True, dropout_p=0.1, seed=4),
    "grouped K/V heads, causal": _call(lq=40, lk=56, key_mask=True, kv_heads=1, is_causal=True),
    "attn_mask": _call(attn_mask=torch.rand(50, 50) > 0.3),
    "cross-attention": _call(lq=7, lk=50, key_mask=True),
    "fp32": _call(dtype=torch.float32, key_mask=True),
}


def _plain(value: object) -> object:
    """A launch argument as JSON: tensors by what a kernel's specialisation sees of them."""
    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype), list(value.shape), list(value.stride()), value.data_ptr() % 16]
    return [type(value).__name__, value]


def _record(launch: Launch) -> dict[str, object]:
    return {"kernel": launch.name, "hash": launch.kernel_hash, "grid": list(launch.grid),
            "handles": [repr(h) for h in launch.handles], "args": [_plain(a) for a in launch.kernel_args]}  # fmt: skip


def main() -> None:
    _dispatch.interpreting = lambda: True  # the triton backend on CPU tensors
    launchers = (attn_launch._attn_fwd, attn_launch._attn_bwd_dq, attn_launch._attn_bwd_dkdv)
    passes: dict[str, dict[str, object]] = {}
    with offline_driver() as driver, counting_jit_runs() as runs:
        for call in CALLS.values():  # the first launch of each key tunes: not compared
            call()
        for name, direct in (("through JITFunction.run", False), ("remembering", True), ("direct", True)):
            for launcher in launchers:
                launcher.direct = direct
            driver.launches.clear()
            runs[0] = 0
            records = {}
            for call_name, call in CALLS.items():
                start, hooked = len(driver.launches), len(HOOK_SAW)
                call()
                records[call_name] = {"launches": [_record(launch) for launch in driver.launches[start:]],
                                      "hook saw": HOOK_SAW[hooked:]}  # fmt: skip
            passes[name] = {"jit_runs": runs[0], "launches": len(driver.launches), "records": records}
    print(json.dumps(passes))


def specialization_probe() -> None:
    """Print, as JSON, how Triton's own launch path specialises a pointer argument: the specialisation of a probe
    kernel's ``X_ptr`` for fp16 and fp32 tensors starting at every even byte offset up to 256 from a 256-byte
    aligned buffer, through ``JITFunction``'s binder under the offline driver. ``TunedLaunch`` keys a remembered
    kernel on the pointer's dtype and on ``data_ptr() % 16 == 0`` only; ``test_launch`` checks that this is all
    Triton tells apart."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(X_ptr, n, BLOCK: tl.constexpr):
        tl.store(X_ptr + tl.arange(0, BLOCK), 0.0, mask=tl.arange(0, BLOCK) < n)

    found: dict[str, list[list[object]]] = {}
    with offline_driver():
        *_, binder = probe.create_binder()
        for dtype in (torch.float16, torch.float32):
            elt = dtype.itemsize
            buf = torch.empty(4096, dtype=dtype)
            start = -(-buf.data_ptr() // 256) * 256 - buf.data_ptr()  # bytes to the next 256-byte boundary
            for offset in range(0, 258, elt):
                view = buf[(start + offset) // elt :]
                _, specialization, _ = binder(view, 5, BLOCK=16)
                found.setdefault(str(dtype), []).append([offset, repr(specialization[0])])
    print(json.dumps(found))
