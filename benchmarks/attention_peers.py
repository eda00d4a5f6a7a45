"""The peers ``masked_attention`` is measured against, each written the way its own authors would write our masks.

A speed ratio says as much about the peer as about our kernel, so every peer gets its idiomatic form of the two
masks SCL needs (the video ViT's frame-block + global-CLS pattern over [CLS_1..CLS_F, patches of frame 1, ...,
patches of frame F], and key padding at the end of each row), and every form is checked equal to
``scl_kernels.reference.attention_mask_ref`` before a time of it may count:

- FlexAttention: one arithmetic ``mask_mod`` (the frame of a token computed from its position; key padding as a
  per-sample length compare), a ``BlockMask`` built once by the compiled ``create_block_mask``, tile sizes that suit
  196-patch frames, and the kernel options Flex exposes (``FlexConfig``; the report times each and keeps the
  fastest). ``expand_block_mask`` turns a ``BlockMask`` back into the elementwise mask the kernel computes.
- SDPA: each backend forced in turn (cuDNN, flash, memory-efficient), each with the mask as bool and as an
  additive float mask whose rows are aligned in memory (``sdpa_candidates``).
- xformers: its own ``BlockDiagonalMask``: queries permuted and keys gathered so that every block-diagonal segment
  is one group of rows that share their keys (``XformersPlan``), never a dense bias.

This module builds and checks; it times nothing. ``benchmarks/gpu_report.py`` (the search over configurations),
``benchmarks/bench_attention.py`` and ``tests/test_attention_peers.py`` share it, so there is one ``mask_mod``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Call = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class MaskMismatch(AssertionError):
    """A peer's mask is not the reference mask: its times must not count (and a test must fail, not skip)."""


def check_equal(name: str, got: torch.Tensor, want: torch.Tensor | None, batch: int, lq: int, lk: int) -> None:
    """Raise ``MaskMismatch`` unless ``got`` (broadcastable to (B, 1, Lq, Lk)) is ``want`` (None: all visible)."""
    want = torch.ones(1, 1, lq, lk, dtype=torch.bool, device=got.device) if want is None else want.to(got.device)
    got_b, want_b = (m.expand(batch, 1, lq, lk) for m in (got, want))
    if not torch.equal(got_b, want_b):
        diff = (got_b != want_b).nonzero()
        raise MaskMismatch(f"{name}: {diff.shape[0]} of {batch * lq * lk} (b, q, k) differ from the reference mask, "
                           f"first at {tuple(diff[0].tolist())}")


def key_lengths(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) int32 number of real keys per row of a (B, Lk) key mask, which must be padding at the end (text
    padding is; a length compare cannot say anything else, so a mask with holes is refused, not approximated)."""
    if key_mask is None:
        return None
    lengths = key_mask.sum(-1)
    if not torch.equal(key_mask.bool(), torch.arange(key_mask.shape[-1], device=key_mask.device) < lengths[:, None]):
        raise ValueError("key_mask must keep a prefix of each row (padding at the end) to be a per-row length")
    return lengths.to(torch.int32)


# ----------------------------------------------------------------------------------------------------------------
# FlexAttention
# ----------------------------------------------------------------------------------------------------------------


def flex_mask_mod(*, frames: int | None, seq_len: int, lengths: torch.Tensor | None) -> MaskMod | None:
    """The ``mask_mod`` of our attention pattern, or None where every key is visible.

    Arithmetic only: a token's frame is its position's quotient, so no score element reads a lookup table.
    With F CLS tokens first and then F frames of P patches, the patch at position i >= F is in frame (i - F) // P;
    a CLS row sees every key; a patch row of frame f sees CLS_f (position f) and the patches of frame f. Key padding
    is one compare with this sample's length (``lengths[b]``, one value per program in the compiled kernel).
    """
    frame_pattern = frames is not None and frames > 1
    if not frame_pattern:
        if lengths is None:
            return None

        def key_padding(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return kv_idx < lengths[b]

        return key_padding
    if seq_len % frames != 0 or seq_len // frames < 2:
        raise ValueError(f"frames needs L = F * (1 + P) with P >= 1, got L={seq_len}, F={frames}")
    n_cls, patches = frames, seq_len // frames - 1

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        # for a CLS row (q_idx < F) q_frame is meaningless, and unused: that row sees everything
        q_frame = (q_idx - n_cls) // patches
        same_frame = (kv_idx >= n_cls) & ((kv_idx - n_cls) // patches == q_frame)
        visible = (q_idx < n_cls) | (kv_idx == q_frame) | same_frame
        return visible if lengths is None else visible & (kv_idx < lengths[b])

    return mask_mod


@dataclass(frozen=True)
class FlexConfig:
    """One way to run FlexAttention on a shape: the BlockMask's tile (query rows, key columns), the kernel options
    (``flex_attention(kernel_options=...)``), and the ``torch.compile`` mode."""

    name: str
    block_size: tuple[int, int] = (128, 128)
    kernel_options: tuple[tuple[str, Any], ...] = ()
    mode: str | None = None

    @property
    def options(self) -> dict[str, Any] | None:
        return dict(self.kernel_options) or None

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.kernel_options)
        text = f"tiles {self.block_size[0]}x{self.block_size[1]}" + (f", {opts}" if opts else "")
        return text + (f", mode={self.mode}" if self.mode else "")

    def with_options(self, suffix: str, **options: Any) -> FlexConfig:
        return replace(self, name=f"{self.name}{suffix}", kernel_options=(*self.kernel_options, *options.items()))


def flex_configs(*, frames: int | None, lk: int, key_mask: bool) -> list[FlexConfig]:
    """The tile sizes worth trying for a shape; ``flex_refinements`` adds kernel options to the fastest.

    128 x 128 is ``create_block_mask``'s default and the H100/H200 forward tile for D=64. The frame pattern's edges
    fall every 196 patches, off any power of two, so a 128-tile is nearly always partial: at L = 788, where 25% of
    the score matrix is visible, the tiles the frame-block mask visits cover 87% of it at 128 x 128, 67% at
    64 x 128 and 52% at 64 x 64. Smaller query tiles need the kernel's BLOCK_M to match (it must divide
    the tile); torch 2.13's default backward tile on sm_90 (64 x 128) needs key tiles of 128, so 64 x 64 may run
    only forward there (the search then keeps another for forward + backward).
    """
    configs = [FlexConfig("128x128")]
    if (frames is not None and frames > 1) or (key_mask and lk > 128):
        configs.append(FlexConfig("64x128", (64, 128), (("BLOCK_M", 64),)))
        configs.append(FlexConfig("64x64", (64, 64), (("BLOCK_M", 64), ("BLOCK_N", 64))))
    return configs


def flex_refinements(best: FlexConfig, *, rows_safe: bool, experimental: bool) -> list[FlexConfig]:
    """Kernel options tried on top of the fastest tiles: ``PRESCALE_QK`` (q scaled once instead of every score)
    with ``ROWS_GUARANTEED_SAFE`` where every query row sees a key (true of every shape here: CLS keys, non-empty
    texts; the kernel then drops its empty-row guard). With ``experimental``: ``USE_TMA`` (Hopper and later; Flex
    calls it experimental, and a device fault would end the whole report, so it is opt-in) and inductor's own
    search over kernel tiles (``max-autotune-no-cudagraphs``: minutes of compiling)."""
    safe = {"ROWS_GUARANTEED_SAFE": True} if rows_safe else {}
    out = [best.with_options("+prescale" + ("+safe" if rows_safe else ""), PRESCALE_QK=True, **safe)]
    if experimental:
        out.append(best.with_options("+tma", USE_TMA=True))
        tiles = tuple((k, v) for k, v in best.kernel_options if not k.startswith("BLOCK_"))
        out.append(replace(best, name=f"{best.name}+autotune", kernel_options=tiles,
                           mode="max-autotune-no-cudagraphs"))
    return out


def build_block_mask(mask_mod: MaskMod, *, batch: int | None, lq: int, lk: int, device: torch.device,
                     block_size: tuple[int, int] = (128, 128), compile: bool = True) -> Any:
    """``create_block_mask`` for ``mask_mod``, compiled where asked (the authors' advice: the eager version
    materialises the (B, H, Lq, Lk) mask on the way). ``batch=None`` builds one mask broadcast over the batch
    (a pattern that does not depend on b). Across torch versions: 2.13 deprecates ``_compile=True`` in favour of
    ``torch.compile(create_block_mask)`` (what the flag now runs), and a future one may drop the flag."""
    from torch.nn.attention.flex_attention import create_block_mask

    args = (mask_mod, batch, None, lq, lk)
    kwargs: dict[str, Any] = {"device": device, "BLOCK_SIZE": block_size}
    if not compile:
        return create_block_mask(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return create_block_mask(*args, **kwargs, _compile=True)
        except TypeError:  # the flag is gone: compile the function itself
            return torch.compile(create_block_mask)(*args, **kwargs)


def _listed_blocks(num: torch.Tensor, idx: torch.Tensor, n_kv: int) -> torch.Tensor:
    """(B, H, nq, n_kv) bool: the key tiles a BlockMask lists per query tile (``num`` (B, H, nq) counts,
    ``idx`` (B, H, nq, max) tile indices, only the first ``num`` of each row meaningful)."""
    listed = torch.zeros(*num.shape, n_kv + 1, dtype=torch.bool, device=num.device)
    valid = torch.arange(idx.shape[-1], device=idx.device) < num[..., None]
    cols = torch.where(valid, idx.long(), n_kv)  # unlisted slots go to a spare column, dropped below
    listed.scatter_(-1, cols, True)
    return listed[..., :n_kv]


@dataclass
class BlockCounts:
    """Tile statistics of one BlockMask (summed over the batch): what the kernel visits."""

    partial: int  # tiles on which the kernel evaluates mask_mod
    full: int  # tiles it computes without mask_mod
    total: int  # all (query tile, key tile) pairs
    empty_listed: int  # listed tiles with nothing visible: work a correct BlockMask never asks for
    both: int  # tiles listed as partial and full (the kernel would add them twice)

    def __str__(self) -> str:
        return f"{self.partial} partial + {self.full} full of {self.total} tiles"


def expand_block_mask(block_mask: Any, mask_mod: MaskMod | None, batch: int, lq: int,
                      lk: int) -> tuple[torch.Tensor, BlockCounts]:
    """The (B, 1, Lq, Lk) bool mask FlexAttention computes from ``block_mask``: an element is visible when its tile
    is listed as full, or listed as partial and ``mask_mod`` allows it; unlisted tiles are skipped. With the
    tile counts, so a caller can also see that no fully masked tile is visited."""
    from torch.nn.attention.flex_attention import create_mask

    bq, bk = block_mask.BLOCK_SIZE
    nq, nk = math.ceil(lq / bq), math.ceil(lk / bk)
    partial = _listed_blocks(block_mask.kv_num_blocks, block_mask.kv_indices, nk)[:, :, :nq]
    full = torch.zeros_like(partial)
    if block_mask.full_kv_num_blocks is not None:
        full = _listed_blocks(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, nk)[:, :, :nq]

    def to_elements(tiles: torch.Tensor) -> torch.Tensor:
        return tiles.repeat_interleave(bq, -2).repeat_interleave(bk, -1)[..., :lq, :lk]

    if partial.shape[0] not in (1, batch) or partial.shape[1] != 1:
        raise ValueError(f"expected a BlockMask over (1 or {batch}) samples and 1 head, got {tuple(partial.shape)}")
    # a mask broadcast over the batch (built with B=None) is visited once per sample, with that sample's mask_mod
    partial, full = (t.expand(batch, 1, nq, nk) for t in (partial, full))
    if mask_mod is None:
        allowed = torch.ones(batch, 1, lq, lk, dtype=torch.bool, device=partial.device)
    else:
        allowed = create_mask(mask_mod, batch, 1, lq, lk, device=partial.device)
    dense = to_elements(full) | (to_elements(partial) & allowed)
    padded = torch.zeros(batch, 1, nq * bq, nk * bk, dtype=torch.int32, device=partial.device)
    padded[..., :lq, :lk] = allowed.int()
    per_tile = padded.view(batch, 1, nq, bq, nk, bk).sum((3, 5))  # visible elements per tile
    counts = BlockCounts(partial=int(partial.sum()), full=int(full.sum()), total=batch * nq * nk,
                         empty_listed=int((partial & (per_tile == 0)).sum()), both=int((partial & full).sum()))
    return dense, counts


def check_block_mask(block_mask: Any, mask_mod: MaskMod | None, reference: torch.Tensor | None, *, batch: int,
                     lq: int, lk: int) -> BlockCounts:
    """Raise ``MaskMismatch`` unless the BlockMask + mask_mod compute exactly ``reference`` and visit no tile twice
    or in vain; return the tile counts."""
    dense, counts = expand_block_mask(block_mask, mask_mod, batch, lq, lk)
    check_equal("FlexAttention BlockMask", dense, reference, batch, lq, lk)
    if counts.both or counts.empty_listed:
        raise MaskMismatch(f"FlexAttention BlockMask lists {counts.both} tiles twice and {counts.empty_listed} "
                           "tiles with nothing visible")
    return counts


@dataclass
class Candidate:
    """One configuration of a peer, built lazily (a compiled BlockMask costs seconds): ``build()`` returns
    (call(q, k, v) -> out, a detail such as tile counts) with the mask already checked against the reference, and
    raises ``MaskMismatch`` if it is not. ``refusal`` turns the error of a call the peer refuses into one line."""

    peer: str
    key: str  # short id: a pytest id, a row label
    config: str  # what is configured, in words
    build: Callable[[], tuple[Call, str | None]]
    refusal: Callable[[BaseException, list[warnings.WarningMessage]], str] = (
        lambda err, caught: f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")


def raise_recompile_limits() -> None:
    """Room in dynamo's cache for every compiled FlexAttention: one entry per shape, configuration and direction,
    all of one function, far more than the default 8 (past it dynamo silently runs the slow eager path). torch 2.6
    renamed the limits; both names are set where they exist."""
    import torch._dynamo as dynamo

    for limit, value in (("cache_size_limit", 512), ("recompile_limit", 512),
                         ("accumulated_cache_size_limit", 4096), ("accumulated_recompile_limit", 4096)):
        if hasattr(dynamo.config, limit):
            setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), value))


@functools.cache
def _flex_fn(compiled: bool, mode: str | None) -> Callable[..., torch.Tensor]:
    """``flex_attention``, compiled once per mode (each configuration and shape is one more entry of dynamo's cache
    for it: see ``raise_recompile_limits``)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False, mode=mode) if compiled else flex_attention


class FlexPeer:
    """FlexAttention on one problem: its ``mask_mod``, one BlockMask per tile size (built once, outside any timed
    call, and checked), and the compiled ``flex_attention`` (eager where ``compile=False``: the CPU smoke run)."""

    def __init__(self, *, batch: int, lq: int, lk: int, frames: int | None, key_mask: torch.Tensor | None,
                 reference: torch.Tensor | None, device: torch.device, compile: bool) -> None:
        self.batch, self.lq, self.lk, self.reference = batch, lq, lk, reference
        self.device, self.compile = device, compile
        self.lengths = key_lengths(key_mask)
        self.mask_mod = flex_mask_mod(frames=frames, seq_len=lk, lengths=self.lengths)
        self._masks: dict[tuple[int, int], tuple[Any, BlockCounts]] = {}

    @property
    def rows_safe(self) -> bool:
        """Every query row sees at least one key (``ROWS_GUARANTEED_SAFE`` may be set)."""
        return self.reference is None or bool(self.reference.expand(self.batch, 1, self.lq, self.lk).any(-1).all())

    def block_mask(self, block_size: tuple[int, int]) -> tuple[Any, BlockCounts | None]:
        if self.mask_mod is None:
            return None, None  # nothing masked: Flex's dense path
        if block_size not in self._masks:
            # a pattern without key padding does not depend on the sample: one mask, broadcast over the batch
            batch = self.batch if self.lengths is not None else None
            block = build_block_mask(self.mask_mod, batch=batch, lq=self.lq, lk=self.lk, device=self.device,
                                     block_size=block_size, compile=self.compile)
            counts = check_block_mask(block, self.mask_mod, self.reference, batch=self.batch, lq=self.lq, lk=self.lk)
            self._masks[block_size] = (block, counts)
        return self._masks[block_size]

    def candidate(self, config: FlexConfig) -> Candidate:
        def build() -> tuple[Call, str | None]:
            block, counts = self.block_mask(config.block_size)
            fn, options = _flex_fn(self.compile, config.mode), config.options
            return (lambda q, k, v: fn(q, k, v, block_mask=block, kernel_options=options)), (
                str(counts) if counts else None)

        return Candidate("flex", config.name, config.describe(), build)


# ----------------------------------------------------------------------------------------------------------------
# SDPA
# ----------------------------------------------------------------------------------------------------------------

SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
"""The backends an expert would force, fastest first by reputation; MATH (the unfused fallback) only where none of
these accepts a case, which is SDPA's own default behaviour (the ``sdpa`` row)."""


def additive_mask(mask: torch.Tensor, dtype: torch.dtype, align: int = 16) -> torch.Tensor:
    """``mask`` as an additive float mask (0 where visible, -inf where not) in ``dtype``, with each row's storage
    padded to a multiple of ``align`` elements: the memory-efficient kernel needs aligned rows and otherwise copies
    the mask into a padded one on every call (SDPA's ``preprocess_mask``), and a bool mask is converted to this
    form on every call too."""
    *lead, lq, lk = mask.shape
    storage = torch.full((*lead, lq, -(-lk // align) * align), float("-inf"), dtype=dtype, device=mask.device)
    out = storage[..., :lk]
    out.masked_fill_(mask, 0.0)
    return out


def sdpa_mask_forms(reference: torch.Tensor | None, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    """Form name -> the mask in that form, each checked against ``reference`` (which is also the bool form)."""
    if reference is None:
        return {"no mask": None}
    additive = additive_mask(reference, dtype)
    if not (torch.equal(additive == 0, reference) and torch.equal(torch.isneginf(additive), ~reference)):
        raise MaskMismatch("SDPA additive mask: not 0 / -inf where the reference is True / False")
    return {"bool": reference, "additive": additive}


@contextlib.contextmanager
def sdpa_backend(name: str) -> Iterator[None]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = getattr(SDPBackend, SDPA_BACKENDS[name], None)
    if member is None:
        raise RuntimeError(f"this torch has no SDPBackend.{SDPA_BACKENDS[name]}")
    with sdpa_kernel(member):
        yield


def sdpa_call(backend: str, mask: torch.Tensor | None) -> Call:
    """SDPA forced onto ``backend`` with ``mask`` (built once, outside the timed call)."""

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_backend(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return call


def sdpa_refusal(err: BaseException, caught: list[warnings.WarningMessage]) -> str:
    """One line for a backend that refused a case: SDPA's warnings carry the reasons ("... kernel not used
    because:" and then one warning per reason); its error only says that no kernel was left."""
    lines = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    reasons = [line for line in dict.fromkeys(lines) if not line.endswith("because:")]
    return "; ".join(reasons)[:240] or str(err).strip().split(". ")[0][:200]


def sdpa_keys(masked: bool) -> list[str]:
    """The ids ``sdpa_candidates`` gives its configurations (pytest ids, without building any mask)."""
    return [f"{backend}-{form}" for form in (("bool", "additive") if masked else ("no-mask",))
            for backend in SDPA_BACKENDS]


def sdpa_candidates(reference: torch.Tensor | None, dtype: torch.dtype) -> list[Candidate]:
    """Every (backend, mask form) pair; a backend that refuses a case says so when first called."""
    forms = sdpa_mask_forms(reference, dtype)
    return [Candidate("sdpa_best", f"{backend}-{form}".replace(" ", "-"),
                      f"{backend}, {form}" + (" mask" if mask is not None else ""),
                      (lambda b=backend, m=mask: (sdpa_call(b, m), None)), refusal=sdpa_refusal)
            for form, mask in forms.items() for backend in SDPA_BACKENDS]


# ----------------------------------------------------------------------------------------------------------------
# xformers
# ----------------------------------------------------------------------------------------------------------------


def xformers_ops() -> tuple[Any, str]:
    """(``xformers.ops``, its version) where xformers imports, else (None, why, in one line)."""
    try:
        import xformers
        import xformers.ops as xops
    except Exception as err:  # noqa: BLE001 - an ImportError, or a wheel that breaks on import
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]
        return None, f"xformers not importable ({reason}; pip install xformers, or put its wheel in .whl/)"
    version = getattr(xformers, "__version__", "?")
    if not getattr(xformers, "_has_cpp_library", True):
        # its own kernels did not load (a wheel built for another torch); it can still reach torch's flash and
        # cutlass kernels, so this is a note, not a refusal
        version += " (own C++ kernels not loaded: wheel built for another torch)"
    return xops, version


def xformers_refusal(err: BaseException) -> str:
    """xformers' "No operator found" message (inputs, then per operator its reasons over many lines) as one line:
    each operator with its first reason."""
    text = str(err)
    found = re.findall(r"`([^`]+)` is not supported because:\n\s+([^\n]+)", text)
    if not found:
        return f"{type(err).__name__}: {text.splitlines()[0][:200] if text else ''}"
    return "no xformers operator accepts it: " + "; ".join(f"{op}: {why.strip()}" for op, why in found)[:300]


@dataclass
class XformersPlan:
    """Our mask as one ``BlockDiagonalMask`` over packed rows: segment s is ``q_seqlen[s]`` query rows that all see
    the same ``kv_seqlen[s]`` keys. Queries are permuted (each row once); keys are gathered per segment (a key may
    appear in several segments: CLS keys, and every key of a video sample twice, once for the CLS rows and once
    for its frame's rows). Indices are (sample, position) pairs into the (B, L, H, D) layout."""

    q_b: torch.Tensor  # (Mq,) sample of each packed query row
    q_l: torch.Tensor  # (Mq,) its position
    kv_b: torch.Tensor  # (Mk,)
    kv_l: torch.Tensor  # (Mk,)
    q_seqlen: list[int] = field(default_factory=list)
    kv_seqlen: list[int] = field(default_factory=list)
    inverse: torch.Tensor | None = None  # (B * Lq,) packed index of each original query row (b * Lq + l)

    def describe(self) -> str:
        return (f"BlockDiagonalMask, {len(self.q_seqlen)} segments, {self.kv_b.numel()} packed keys "
                f"for {self.q_b.numel()} queries")


def xformers_plan(batch: int, lq: int, lk: int, *, frames: int | None, lengths: torch.Tensor | None,
                  device: torch.device) -> XformersPlan:
    """Segments for our pattern: per sample, its F CLS rows over all its real keys, then per frame f its P patch
    rows over CLS_f and frame f's real patches (or, without frames, all rows over the real keys)."""
    lens = [lk] * batch if lengths is None else [int(n) for n in lengths.tolist()]  # host copy, at setup only
    q_b: list[int] = []
    q_l: list[int] = []
    kv_b: list[int] = []
    kv_l: list[int] = []
    q_seqlen: list[int] = []
    kv_seqlen: list[int] = []

    def segment(b: int, rows: list[int], keys: list[int]) -> None:
        q_b.extend([b] * len(rows))
        q_l.extend(rows)
        kv_b.extend([b] * len(keys))
        kv_l.extend(keys)
        q_seqlen.append(len(rows))
        kv_seqlen.append(len(keys))

    for b, n in enumerate(lens):
        if frames is None or frames <= 1:
            segment(b, list(range(lq)), list(range(n)))
            continue
        patches = lq // frames - 1
        segment(b, list(range(frames)), list(range(n)))  # the CLS rows see every real key
        for f in range(frames):
            start = frames + f * patches
            segment(b, list(range(start, start + patches)), [f, *range(start, min(start + patches, n))])
    as_idx = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    plan = XformersPlan(q_b=as_idx(q_b), q_l=as_idx(q_l), kv_b=as_idx(kv_b), kv_l=as_idx(kv_l), q_seqlen=q_seqlen,
                        kv_seqlen=kv_seqlen)
    flat = plan.q_b * lq + plan.q_l
    plan.inverse = torch.empty_like(flat)
    plan.inverse[flat] = torch.arange(flat.numel(), device=device)
    return plan


def plan_mask(plan: XformersPlan, q_seqstart: list[int], kv_seqstart: list[int], batch: int, lq: int,
              lk: int) -> torch.Tensor:
    """The (B, 1, Lq, Lk) bool mask a block-diagonal attention over the packed rows computes, given the segment
    starts it uses (the ``BlockDiagonalMask``'s own ``seqstart_py``, in the report). Raises ``MaskMismatch`` for a
    segment that mixes samples or has queries but no key (xformers would give NaN rows), or for a query row that
    is not packed exactly once."""
    dense = torch.zeros(batch, lq, lk, dtype=torch.bool, device=plan.q_b.device)
    for s in range(len(q_seqstart) - 1):
        qs, qe, ks, ke = q_seqstart[s], q_seqstart[s + 1], kv_seqstart[s], kv_seqstart[s + 1]
        if qe == qs:
            continue
        b = plan.q_b[qs:qe]
        if ke == ks or not (torch.all(b == b[0]) and torch.all(plan.kv_b[ks:ke] == b[0])):
            raise MaskMismatch(f"xformers segment {s}: no keys, or rows of more than one sample")
        dense[int(b[0]), plan.q_l[qs:qe, None], plan.kv_l[None, ks:ke]] = True
    rows = torch.bincount(plan.q_b * lq + plan.q_l, minlength=batch * lq)
    if rows.numel() != batch * lq or not torch.all(rows == 1):
        raise MaskMismatch("xformers plan: query rows not packed exactly once")
    return dense[:, None]


def seqstarts(seqlens: list[int]) -> list[int]:
    out = [0]
    for n in seqlens:
        out.append(out[-1] + n)
    return out


def xformers_call(xops: Any, plan: XformersPlan, bias: Any, batch: int, lq: int) -> Call:
    """Attention through ``xops.memory_efficient_attention`` with the plan's BlockDiagonalMask: one gather of the
    packed queries and keys, one call, one gather back to (B, H, Lq, D), all in the timed call (they are what
    expressing our pattern in xformers' types costs)."""

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h, d = q.shape[1], q.shape[-1]
        qp = q.transpose(1, 2)[plan.q_b, plan.q_l][None]  # (1, Mq, H, D)
        kp = k.transpose(1, 2)[plan.kv_b, plan.kv_l][None]  # (1, Mk, H, D)
        vp = v.transpose(1, 2)[plan.kv_b, plan.kv_l][None]
        out = xops.memory_efficient_attention(qp, kp, vp, attn_bias=bias)[0]  # (Mq, H, D)
        return out.index_select(0, plan.inverse).view(batch, lq, h, d).transpose(1, 2)

    return call


def xformers_candidate(*, batch: int, lq: int, lk: int, frames: int | None, key_mask: torch.Tensor | None,
                       reference: torch.Tensor | None, device: torch.device) -> Candidate | str:
    """xformers with the plan's BlockDiagonalMask (its mask checked from the mask object's own segment starts), or
    why xformers cannot be tried, in one line."""
    xops, version = xformers_ops()
    if xops is None:
        return version
    if device.type != "cuda":
        return f"xformers {version}: its kernels need CUDA"
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask

    plan = xformers_plan(batch, lq, lk, frames=frames, lengths=key_lengths(key_mask),
                         device=device)

    def build() -> tuple[Call, str | None]:
        try:
            bias = BlockDiagonalMask.from_seqlens(plan.q_seqlen, plan.kv_seqlen, device=device)
        except TypeError:  # xformers before ``device=``: the segment starts are built on the CPU, then moved
            bias = BlockDiagonalMask.from_seqlens(plan.q_seqlen, plan.kv_seqlen).to(device)
        got = plan_mask(plan, bias.q_seqinfo.seqstart_py, bias.k_seqinfo.seqstart_py, batch, lq, lk)
        check_equal("xformers BlockDiagonalMask", got, reference, batch, lq, lk)
        return xformers_call(xops, plan, bias, batch, lq), None

    return Candidate("xformers", "block-diagonal", f"xformers {version}, {plan.describe()}", build,
                     refusal=lambda err, caught: xformers_refusal(err))
