"""Fused contrastive losses: InfoNCE (ITC and SCL) and the cosine recovery loss, never an N x N matrix.

The parts, one concept per file:

- ``kernels.py``: the Triton kernels, and the maths they share (its docstring: the statistics, the backward);
- ``configs.py``: tile lists, the pruner, the autotuners, the backward's chunk and split-K sizes;
- ``launch.py``: host launchers (allocate, launch, the backward's chunk loop) and ``recorded_launches``;
- ``op.py``: the ``torch.library`` ops, their autograd, the public functions;
- ``specs.py``: what a GPU launches, for the sm_80/sm_90 compile check.
"""

# the autotuners and their lists, read by the GPU report (its tuning tables) and the launch tests
from .configs import _BWD_GPU_CONFIGS as _BWD_GPU_CONFIGS
from .configs import _FWD_GPU_CONFIGS as _FWD_GPU_CONFIGS
from .configs import _bwd_tuned as _bwd_tuned
from .configs import _fwd_tuned as _fwd_tuned
from .configs import _prune_by_d as _prune_by_d
from .launch import Launch, gemm_flops, recorded_launches
from .op import cosine_recovery, info_nce
from .specs import COMPILE_SPECS

__all__ = ["COMPILE_SPECS", "Launch", "cosine_recovery", "gemm_flops", "info_nce", "recorded_launches"]
