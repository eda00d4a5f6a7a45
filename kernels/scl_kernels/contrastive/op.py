"""The ``info_nce`` and ``cosine_recovery`` ops: ``torch.library`` registration, autograd, the public functions.

Each public function resolves its backend outside the op (``_dispatch``) and calls one custom op, so
``torch.compile`` sees one opaque op. The op runs the Triton launchers (launch.py), the C++ CPU kernel
(``csrc/info_nce.cpp``, ``info_nce`` only) or the plain PyTorch reference; the reference backend's backward is the
dense one below (autograd does not reach inside a custom op).

Dtypes: the Triton kernels take fp16, bf16 and fp32. Every backend returns the loss in float32 (float64 for
float64 inputs): the accumulation is fp32, and rounding a scalar loss to fp16 only loses digits.
"""

from __future__ import annotations

import math

import torch

from .. import reference
from .._dispatch import record, resolve
from .launch import EPS, STATS_ROWS, TRITON_DTYPES, cosine_bwd, cosine_fwd, info_nce_bwd, info_nce_fwd

# --------------------------------------------------------------------------------------------------------------
# dense PyTorch backward of the reference backend (autograd does not reach inside a custom op)
# --------------------------------------------------------------------------------------------------------------


def _no_grad(like: torch.Tensor) -> torch.Tensor:
    """The (0,) placeholder for a gradient nobody asked for: a fresh tensor each time, since a custom op's
    outputs may not alias one another."""
    return like.new_empty(0)


def _or_empty(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return grad if grad is not None else _no_grad(like)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _info_nce_bwd_dense(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same gradients as the kernels, with the N x N matrices materialised."""
    ct = _compute_dtype(a.dtype)
    n = a.shape[0]
    t = temperature.to(ct)
    inv_a = 1.0 / a.to(ct).norm(dim=1, keepdim=True).clamp_min(EPS)
    inv_b = 1.0 / b.to(ct).norm(dim=1, keepdim=True).clamp_min(EPS)
    an, bn = a.to(ct) * inv_a, b.to(ct) * inv_b
    s = an @ bn.t() / t  # (N, N)
    eye = torch.eye(n, device=a.device, dtype=ct)
    g = torch.softmax(s, dim=1) - eye
    if symmetric:
        g = g + torch.softmax(s, dim=0) - eye
    g = g * (grad.to(ct) / n)
    ga, gb = g @ bn / t, g.t() @ an / t  # gradients w.r.t. the normalised rows
    da = inv_a * (ga - an * (an * ga).sum(1, keepdim=True))
    db = inv_b * (gb - bn * (bn * gb).sum(1, keepdim=True))
    dt = -(g * s).sum() / t
    return da.to(a.dtype), db.to(b.dtype), dt.to(temperature.dtype)


def _cosine_bwd_dense(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ct = _compute_dtype(a.dtype)
    inv_a = 1.0 / a.to(ct).norm(dim=1, keepdim=True).clamp_min(EPS)
    inv_b = 1.0 / b.to(ct).norm(dim=1, keepdim=True).clamp_min(EPS)
    an, bn = a.to(ct) * inv_a, b.to(ct) * inv_b
    cos = (an * bn).sum(1, keepdim=True)
    coef = -grad.to(ct) / a.shape[0]
    return (coef * inv_a * (bn - an * cos)).to(a.dtype), (coef * inv_b * (an - bn * cos)).to(b.dtype)


# --------------------------------------------------------------------------------------------------------------
# torch.library ops
# --------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("scl::info_nce", mutates_args=())
def _info_nce_op(
    a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor, symmetric: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stats): stats is (STATS_ROWS, N) fp32 [inv_a, inv_b, lse_a, lse_b, q_a, q_b] for the kernels (q: the
    off-diagonal softmax mass of each row of s and of s^T), (0, N) for the reference."""
    record("info_nce", backend)
    if backend == "triton":
        return info_nce_fwd(a, b, temperature, symmetric)
    if backend == "native":
        return torch.ops.scl.info_nce_native(a, b, temperature, symmetric)
    loss = reference.info_nce_ref(a, b, temperature, symmetric=symmetric)
    return loss, a.new_empty((0, a.shape[0]), dtype=torch.float32)


@_info_nce_op.register_fake
def _(a, b, temperature, symmetric, backend):
    rows = 0 if backend == "reference" else STATS_ROWS
    return a.new_empty((), dtype=_compute_dtype(a.dtype)), a.new_empty((rows, a.shape[0]), dtype=torch.float32)


@torch.library.custom_op("scl::info_nce_backward", mutates_args=())
def _info_nce_backward_op(
    grad: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: torch.Tensor,
    stats: torch.Tensor,
    symmetric: bool,
    need_a: bool,
    need_b: bool,
    need_t: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da, db, dtemperature); an input whose gradient is not needed gets an empty (0,) tensor."""
    if backend == "triton":
        da, db, dt = info_nce_bwd(grad, a, b, temperature, stats, symmetric, need_a, need_b, need_t)
        return _or_empty(da, a), _or_empty(db, b), _or_empty(dt, temperature)
    if backend == "native":
        return torch.ops.scl.info_nce_native_backward(grad, a, b, temperature, stats, symmetric, need_a, need_b, need_t)
    da, db, dt = _info_nce_bwd_dense(grad, a, b, temperature, symmetric)
    return (da if need_a else _no_grad(a)), (db if need_b else _no_grad(b)), (dt if need_t else _no_grad(temperature))


@_info_nce_backward_op.register_fake
def _(grad, a, b, temperature, stats, symmetric, need_a, need_b, need_t, backend):
    return (
        torch.empty_like(a) if need_a else _no_grad(a),
        torch.empty_like(b) if need_b else _no_grad(b),
        torch.empty_like(temperature) if need_t else _no_grad(temperature),
    )


def _info_nce_setup_context(ctx, inputs, output) -> None:
    a, b, temperature, symmetric, backend = inputs
    ctx.symmetric, ctx.backend = symmetric, backend
    ctx.save_for_backward(a, b, temperature, output[1])


def _info_nce_autograd(ctx, grad_loss: torch.Tensor, _grad_stats: torch.Tensor | None):
    a, b, temperature, stats = ctx.saved_tensors
    need_a, need_b, need_t = ctx.needs_input_grad[:3]
    da, db, dt = torch.ops.scl.info_nce_backward(
        grad_loss, a, b, temperature, stats, ctx.symmetric, need_a, need_b, need_t, ctx.backend
    )
    return (
        da if need_a else None,
        db if need_b else None,
        dt if need_t else None,
        None,  # symmetric
        None,  # backend
    )


torch.library.register_autograd("scl::info_nce", _info_nce_autograd, setup_context=_info_nce_setup_context)


@torch.library.custom_op("scl::cosine_recovery", mutates_args=())
def _cosine_op(a: torch.Tensor, b: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stats): stats is (3, N) fp32 [inv_a, inv_b, cos] for the kernel, (0, N) for the reference."""
    record("cosine_recovery", backend)
    if backend == "triton":
        return cosine_fwd(a, b)
    loss = reference.cosine_recovery_ref(a, b, detach_b=False)
    return loss, a.new_empty((0, a.shape[0]), dtype=torch.float32)


@_cosine_op.register_fake
def _(a, b, backend):
    rows = 0 if backend == "reference" else 3
    return a.new_empty((), dtype=_compute_dtype(a.dtype)), a.new_empty((rows, a.shape[0]), dtype=torch.float32)


@torch.library.custom_op("scl::cosine_recovery_backward", mutates_args=())
def _cosine_backward_op(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, stats: torch.Tensor, need_a: bool, need_b: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(da, db); an input whose gradient is not needed gets an empty (0,) tensor."""
    if backend == "triton":
        da, db = cosine_bwd(grad, a, b, stats, need_a, need_b)
        return _or_empty(da, a), _or_empty(db, b)
    da, db = _cosine_bwd_dense(grad, a, b)
    return (da if need_a else _no_grad(a)), (db if need_b else _no_grad(b))


@_cosine_backward_op.register_fake
def _(grad, a, b, stats, need_a, need_b, backend):
    return (torch.empty_like(a) if need_a else _no_grad(a)), (torch.empty_like(b) if need_b else _no_grad(b))


def _cosine_setup_context(ctx, inputs, output) -> None:
    a, b, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(a, b, output[1])


def _cosine_autograd(ctx, grad_loss: torch.Tensor, _grad_stats: torch.Tensor | None):
    a, b, stats = ctx.saved_tensors
    need_a, need_b = ctx.needs_input_grad[:2]
    da, db = torch.ops.scl.cosine_recovery_backward(grad_loss, a, b, stats, need_a, need_b, ctx.backend)
    return (da if need_a else None), (db if need_b else None), None  # None: backend


torch.library.register_autograd("scl::cosine_recovery", _cosine_autograd, setup_context=_cosine_setup_context)


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------


def _check_pair(op: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{op}: a and b must both be (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{op}: N and D must be positive, got {tuple(a.shape)}")
    if a.dtype != b.dtype or not a.is_floating_point():
        raise ValueError(f"{op}: a and b must share one float dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{op}: a and b must be on one device, got {a.device} and {b.device}")


def _pick_backend(op: str, a: torch.Tensor, backend: str | None, *, has_native: bool) -> str:
    """resolve(), except that float64 inputs fall back to the reference unless the caller named a backend (the
    kernels compute in fp32; float64 is for checking, where the reference is the point)."""
    choice = resolve(op, a.device, backend, has_native=has_native)
    if choice in ("triton", "native") and a.dtype not in TRITON_DTYPES and backend in (None, "auto"):
        return "reference"
    return choice


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    detach_b: bool = False,
    symmetric: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over matched rows, without ever forming the N x N logits.

    ``loss = mean_i CE(s[i], i) + mean_j CE(s[:, j], j)`` (the second term only if ``symmetric``), with
    ``s = normalize(a) normalize(b)^T / temperature`` and rows L2-normalised over D (``F.normalize``'s eps).
    The two directions are summed, as ITC and SCL do.

    Args:
        a: (N, D) fp16/bf16/fp32 (float64 runs the reference), one row per sample.
        b: (N, D), same dtype and device; row i is a's positive.
        temperature: a float, or a 0-dim tensor that receives a gradient (ITC's learnable temperature).
            Clamping it to a sane range is the caller's job.
        detach_b: stop the gradient into ``b`` (SCL's targets): ``b`` then gets no gradient at all from this
            op (its ``.grad`` stays None), not a zero tensor, and the kernels skip its GEMMs in the backward.
        symmetric: add the b -> a direction.
        backend: ``"triton"``, ``"native"`` (C++ CPU), ``"reference"`` or None/``"auto"`` (see ``_dispatch``).

    Returns:
        0-dim float32 loss (float64 for float64 inputs), whatever the input dtype.
    """
    _check_pair("info_nce", a, b)
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"info_nce: temperature must be a scalar, got shape {tuple(temperature.shape)}")
        t = temperature.reshape(())
    else:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"info_nce: temperature must be a positive number, got {temperature!r}")
        # float64 inputs keep a float64 temperature: 0.07 rounded to fp32 moves the loss by ~1e-9
        t = torch.full((), float(temperature), device=a.device, dtype=_compute_dtype(a.dtype))
    choice = _pick_backend("info_nce", a, backend, has_native=True)
    loss, _ = torch.ops.scl.info_nce(a, b.detach() if detach_b else b, t, symmetric, choice)
    return loss


def cosine_recovery(
    a: torch.Tensor, b: torch.Tensor, *, detach_b: bool = True, backend: str | None = None
) -> torch.Tensor:
    """``mean_i (1 - cos(a_i, b_i))``: the plain cosine form of SCL's recovery objective, fused.

    Args:
        a: (N, D) recovered features (fp16/bf16/fp32; float64 runs the reference).
        b: (N, D) targets, same dtype and device.
        detach_b: stop the gradient into ``b`` (the default, as SCL's targets): ``b`` gets no gradient.
        backend: ``"triton"``, ``"reference"`` or None/``"auto"`` (no C++ kernel: an O(N*D) op that the
            reference already runs at memory speed on a CPU).

    Returns:
        0-dim float32 loss (float64 for float64 inputs).
    """
    _check_pair("cosine_recovery", a, b)
    choice = _pick_backend("cosine_recovery", a, backend, has_native=False)
    loss, _ = torch.ops.scl.cosine_recovery(a, b.detach() if detach_b else b, choice)
    return loss


