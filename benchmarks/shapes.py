"""Named problem shapes shared by every benchmark (pytest suites and ``gpu_report``).

One place, so the pytest benchmarks, the GPU report and the README talk about the same problems. Each kernel
has a ``*_CPU`` list (small enough for a 2-core machine, run by ``pytest benchmarks/ --benchmark-only`` without a
GPU) and a ``*_GPU`` list (sizes of the ``paper`` preset that fill one GPU). Names are stable: they become
pytest ids and rows of the result tables, so rename with care.

The shapes are the ones SCL actually runs (SCL_METHOD.md): 50-token text with padding, 288 px images
(18 x 18 = 324 patches + CLS = 325 tokens), 4-frame 224 px video (4 x 197 = 788 tokens, frame-block mask),
co-attention between the two, and contrastive batches of 4096 (the paper's global batch).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttnShape:
    """One ``masked_attention`` problem: q (B, H, Lq, D), k/v (B, H, Lk, D)."""

    name: str
    batch: int
    heads: int
    lq: int
    lk: int
    head_dim: int
    frames: int | None = None
    """F for the frame-block + global-CLS pattern (self-attention, L = F * (1 + P))."""
    key_mask: bool = False
    """Pad a random tail of each row's keys (text padding); about a quarter of the keys are padding."""

    def visible_pairs(self) -> int:
        """(query, key) pairs one head of one sample may attend to, ignoring key padding.

        The frame-block pattern skips whole blocks, so counting the dense Lq * Lk would flatter a kernel
        that skips them: FLOPs are counted over visible pairs only."""
        if self.frames is None or self.frames <= 1:
            return self.lq * self.lk
        f = self.frames
        per_frame = self.lk // f  # 1 CLS + P patches
        patches = per_frame - 1
        # CLS rows see all L keys; a patch row sees its own CLS and its frame's P patches
        return f * self.lk + f * patches * (1 + patches)

    def flops(self, backward: bool = False) -> float:
        """Matmul FLOPs: forward 2 matmuls (QK^T, PV) = 4 * pairs * D; backward 5 matmuls = 2.5x forward
        (FlashAttention's convention). ``backward=True`` returns forward + backward."""
        fwd = 4.0 * self.batch * self.heads * self.visible_pairs() * self.head_dim
        return fwd * 3.5 if backward else fwd


@dataclass(frozen=True)
class InfoNCEShape:
    """One ``info_nce`` problem: a, b (N, D)."""

    name: str
    n: int
    dim: int

    def flops(self, backward: bool = False) -> float:
        """Forward one N x N x D product (2*N^2*D); backward two more (grad a, grad b)."""
        fwd = 2.0 * self.n * self.n * self.dim
        return fwd * 3.0 if backward else fwd


@dataclass(frozen=True)
class MaskingShape:
    """One ``random_masking`` problem: x (B, F*P, D) patch tokens, keep K = int(P * keep_ratio)."""

    name: str
    batch: int
    frames: int
    patches: int
    dim: int
    keep_ratio: float = 0.2

    @property
    def keep(self) -> int:
        return int(self.patches * self.keep_ratio)

    def bytes_moved(self, itemsize: int, with_pos: bool = False) -> float:
        """Fewest bytes: read the kept rows (and pos rows), write them, plus the (B, K) int64 ids."""
        rows = self.batch * self.frames * self.keep
        per_row = self.dim * itemsize * (3 if with_pos else 2)
        return float(rows * per_row + self.batch * self.keep * 8)


@dataclass(frozen=True)
class TextMaskShape:
    """One ``mlm_mask`` / ``scl_text_mask`` problem: ids (B, L) int64 with a special/padding mask."""

    name: str
    batch: int
    length: int
    vocab_size: int = 30522

    def bytes_moved(self) -> float:
        """Fewest bytes: read ids (int64) and the bool mask, write masked ids (and labels for MLM)."""
        n = self.batch * self.length
        return float(n * (8 + 1 + 8 + 8))


@dataclass(frozen=True)
class StepShape:
    """One training step of a model preset: batch images of ``frames`` frames with ``text_len`` tokens."""

    name: str
    preset: str
    batch: int
    frames: int = 1
    text_len: int = 50
    overrides: tuple[tuple[str, object], ...] = ()
    """Model-config fields to change from the preset, as ("vision.layers", 1) pairs (tiny smoke-test models)."""


ATTN_CPU: list[AttnShape] = [
    AttnShape("text_self_pad", batch=8, heads=4, lq=50, lk=50, head_dim=32, key_mask=True),
    AttnShape("image_self", batch=4, heads=4, lq=197, lk=197, head_dim=64),
    AttnShape("video_frames4", batch=2, heads=4, lq=4 * 50, lk=4 * 50, head_dim=32, frames=4),
    AttnShape("cross_img2txt_pad", batch=8, heads=4, lq=197, lk=50, head_dim=32, key_mask=True),
]
ATTN_GPU: list[AttnShape] = [  # most telling first: a GPU report that runs out of time keeps these
    AttnShape("video_frames4_224", batch=32, heads=12, lq=788, lk=788, head_dim=64, frames=4),
    AttnShape("text_self_pad", batch=256, heads=12, lq=50, lk=50, head_dim=64, key_mask=True),
    AttnShape("video_788_dense", batch=32, heads=12, lq=788, lk=788, head_dim=64),  # vs SDPA flash, no mask
    AttnShape("image_self_288", batch=64, heads=12, lq=325, lk=325, head_dim=64),
    AttnShape("video_frames4_pad", batch=32, heads=12, lq=788, lk=788, head_dim=64, frames=4, key_mask=True),
    AttnShape("cross_txt2img", batch=128, heads=12, lq=50, lk=325, head_dim=64),
    AttnShape("cross_img2txt_pad", batch=128, heads=12, lq=325, lk=50, head_dim=64, key_mask=True),
    AttnShape("long_d128", batch=4, heads=16, lq=4096, lk=4096, head_dim=128),
]

# the text encoder's shape scaled down until the kernels are shorter than the host's work on any GPU: what one
# attention call costs in Python and launches (bench_attention's host path, gpu_report's host section)
ATTN_HOST = AttnShape("host_text_b2", batch=2, heads=2, lq=50, lk=50, head_dim=64, key_mask=True)

INFONCE_CPU: list[InfoNCEShape] = [
    InfoNCEShape("itc_256x512", n=256, dim=512),
    InfoNCEShape("scl_1024x256", n=1024, dim=256),
]
INFONCE_GPU: list[InfoNCEShape] = [
    InfoNCEShape("itc_4096x512", n=4096, dim=512),
    InfoNCEShape("scl_4096x768", n=4096, dim=768),
    InfoNCEShape("big_32768x256", n=32768, dim=256),
]

MASKING_CPU: list[MaskingShape] = [
    MaskingShape("image_196x384", batch=32, frames=1, patches=196, dim=384),
    MaskingShape("video4_196x384", batch=8, frames=4, patches=196, dim=384),
]
MASKING_GPU: list[MaskingShape] = [
    MaskingShape("image_324x768", batch=256, frames=1, patches=324, dim=768),
    MaskingShape("video4_196x768", batch=64, frames=4, patches=196, dim=768),
]

TEXTMASK_CPU: list[TextMaskShape] = [
    TextMaskShape("bert_256x50", batch=256, length=50),
]
TEXTMASK_GPU: list[TextMaskShape] = [
    TextMaskShape("bert_4096x50", batch=4096, length=50),
    TextMaskShape("roberta_16384x64", batch=16384, length=64, vocab_size=50265),
]

# compact costs ~2 s (fused) and ~5 s (naive) of CPU time per step at batch 2 on one core: the largest that fits the
# suite's budget; bigger batches by hand with `python -m benchmarks.bench_step --preset compact --batch 4`
STEP_CPU: list[StepShape] = [
    StepShape("demo_b16", preset="demo", batch=16),
    StepShape("compact_b2", preset="compact", batch=2),
]
STEP_GPU: list[StepShape] = [  # most telling first: the paper preset's MFU and busy fraction are the goal
    StepShape("paper_b32", preset="paper", batch=32),
    StepShape("paper_b128", preset="paper", batch=128),  # a large batch: an out-of-memory error is a result too
    StepShape("compact_b64", preset="compact", batch=64),
]


def ids(shapes: list) -> list[str]:
    """pytest ids for a shape list (``@pytest.mark.parametrize("shape", S, ids=ids(S))``)."""
    return [s.name for s in shapes]
