"""Fused masked attention: FlashAttention-2 style forward and backward in Triton.

One op, ``masked_attention(q, k, v, *, key_mask, frames, attn_mask, is_causal, dropout_p, scale, return_lse)``,
for self- and cross-attention with the three mask kinds of the SCL model (True = may attend):

- ``key_mask`` (B, Lk): text padding; loaded as one row per key block. Tiles made only of padding are skipped.
- ``frames=F``: the flexible vision encoder's frame-block + global-CLS pattern, generated from indices, whole
  blocks skipped (``tiles.py``).
- ``attn_mask``: any bool mask broadcastable to (B, H, Lq, Lk), loaded blockwise with stride 0 on broadcast dims
  (never expanded in memory).

and what code written for SDPA or flash-attn expects of a drop-in: grouped-query K/V heads read in place,
``is_causal`` with SDPA's alignment (the tiles past the diagonal skipped), head dims up to 256, the log-sum-exp on
request, dropout whose Philox pair is a device tensor (a CUDA graph's replays draw new masks), and
``backend="auto"`` taking PyTorch's SDPA where a measured table says it is faster and the call has no structured
mask. Head dims that are not a power of two (or below 16, ``tl.dot``'s minimum) are padded inside the kernel by
masked loads up to ``BLOCK_D``; nothing is copied.

The parts, one concept per file:

- ``tiles.py``: Triton helpers shared by the kernels (tile loads, which pairs may attend, frame spans, causal
  bounds);
- ``forward.py``: the forward kernel (online softmax, log-sum-exp stored per row);
- ``backward.py``: the dQ and dK/dV kernels (probabilities recomputed from the log-sum-exp, no atomics);
- ``dropout.py``: the Philox pair drawn on the device, the kernels' draw from it, ``dropout_keep_mask``;
- ``configs.py``: tile lists, the pruner, the autotuners;
- ``launch.py``: host launchers (allocate, pass the masks as strided views, launch);
- ``op.py``: the ``torch.library`` op, its autograd, the public function;
- ``sdpa.py``: the sdpa backend (the op's contract on PyTorch's SDPA);
- ``auto.py`` and ``crossover.json``: ``backend="auto"``'s choice and its measured table;
- ``specs.py``: what a GPU launches, for the sm_80/sm_90 compile check.
"""

from .dropout import dropout_keep_mask

# the autotuners, read by the GPU report (benchmarks/gpu_report.py: its tuning tables)
from .launch import _attn_bwd_dkdv as _attn_bwd_dkdv
from .launch import _attn_bwd_dq as _attn_bwd_dq
from .launch import _attn_fwd as _attn_fwd
from .op import masked_attention
from .specs import COMPILE_SPECS

__all__ = ["COMPILE_SPECS", "dropout_keep_mask", "masked_attention"]
