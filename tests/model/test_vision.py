"""The flexible vision encoder: frame-block + global-CLS attention, token order, patch dropping, resolutions."""

from __future__ import annotations

import pytest
import torch

from scl_fast.model.attention import attention
from scl_fast.model.config import VisionConfig
from scl_fast.model.vision import VisionEncoder
from scl_kernels.reference import frame_block_mask
from tests.utils import assert_close


def _cfg(**kw: object) -> VisionConfig:
    return VisionConfig(**({"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2} | kw))


def _loop_mask(frames: int, patches: int) -> torch.Tensor:
    """The pattern of SCL_METHOD.md written out token by token: CLS_f sees everything; patch j of frame f sees
    CLS_f and the patches of frame f."""
    n = frames * (1 + patches)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            if q < frames:
                mask[q, k] = True
                continue
            fq = (q - frames) // patches
            fk = k if k < frames else (k - frames) // patches
            mask[q, k] = fq == fk
    return mask


@pytest.mark.parametrize(("frames", "patches"), [(1, 5), (2, 3), (4, 7), (3, 1)])
def test_frame_block_mask_matches_loops(frames: int, patches: int) -> None:
    assert torch.equal(frame_block_mask(frames * (1 + patches), frames), _loop_mask(frames, patches))


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize(("frames", "patches"), [(2, 3), (4, 7)])
def test_attention_frames_equals_dense_reference(backend: str, frames: int, patches: int) -> None:
    """The dispatch point's ``frames=F`` is softmax attention under the loop-built dense mask (float64)."""
    n = frames * (1 + patches)
    q, k, v = (torch.randn(2, 2, n, 16, dtype=torch.float64) for _ in range(3))
    mask = _loop_mask(frames, patches)
    scores = (q @ k.transpose(-1, -2) / 4.0).masked_fill(~mask, float("-inf"))
    expected = torch.softmax(scores, dim=-1) @ v
    out = attention(q, k, v, backend=backend, frames=frames)
    assert_close(out, expected, rtol=1e-12, name=f"{backend} frames={frames}")


def test_video_token_order() -> None:
    """Identical frames with a zero temporal embedding: every CLS_f equals the image's CLS and frame f's
    patches equal the image's patches, at [CLS_1..CLS_F, patches of frame 1, ..., patches of frame F]."""
    torch.manual_seed(0)
    enc = VisionEncoder(_cfg()).double().eval()
    image = torch.randn(2, 1, 3, 32, 32, dtype=torch.float64)
    frames = 3
    out_img = enc(image)  # (B, 1 + P, W)
    out_vid = enc(image.expand(-1, frames, -1, -1, -1))  # (B, F (1 + P), W)
    p = enc.grid**2
    assert out_vid.shape == (2, frames * (1 + p), 32)
    for f in range(frames):
        assert_close(out_vid[:, f], out_img[:, 0], rtol=1e-12, name=f"CLS_{f}")
        assert_close(out_vid[:, frames + f * p: frames + (f + 1) * p], out_img[:, 1:], rtol=1e-12,
                     name=f"patches of frame {f}")


def test_patches_see_only_their_frame() -> None:
    """One block: a patch of frame 0 reads CLS_0 and frame 0's patches only, so changing frame 1 leaves it;
    every CLS reads all frames, so all of them change."""
    torch.manual_seed(0)
    enc = VisionEncoder(_cfg(layers=1)).double()
    torch.nn.init.normal_(enc.temporal_embedding, std=0.02)
    video = torch.randn(2, 2, 3, 32, 32, dtype=torch.float64)
    changed = video.clone()
    changed[:, 1] += torch.randn_like(changed[:, 1])
    a, b = enc(video), enc(changed)
    p = enc.grid**2
    frame0 = slice(2, 2 + p)
    assert_close(b[:, frame0], a[:, frame0], rtol=1e-13, name="frame-0 patches")
    assert (b[:, :2] - a[:, :2]).abs().amax(dim=-1).min() > 1e-6, "a CLS token ignored the other frame"
    assert (b[:, 2 + p:] - a[:, 2 + p:]).abs().amax() > 1e-6


def test_keep_all_patches_equals_intact() -> None:
    """Dropping nothing (keep = P, any keys) gives the intact encoding: kept patches are in ascending order."""
    torch.manual_seed(0)
    enc = VisionEncoder(_cfg()).double()
    video = torch.randn(2, 2, 3, 32, 32, dtype=torch.float64)
    p = enc.grid**2
    noise = torch.rand(2, p)
    assert_close(enc(video, mask_noise=noise, keep=p), enc(video), rtol=1e-13, name="keep all")


def test_masked_pass_keeps_the_smallest_keys() -> None:
    """keep = K: the output is the encoding of exactly the K patches with the smallest keys, the same in every
    frame (checked against an encoder whose patch grid is the kept subset, via equal inputs)."""
    torch.manual_seed(0)
    enc = VisionEncoder(_cfg(layers=1)).double()
    video = torch.randn(2, 2, 3, 32, 32, dtype=torch.float64)
    p, keep = enc.grid**2, 5
    noise = torch.rand(2, p)
    out = enc(video, mask_noise=noise, keep=keep)
    assert out.shape == (2, 2 * (1 + keep), 32)
    # perturb a dropped patch's pixels: nothing changes; perturb a kept one: something does
    ids = noise.argsort(dim=1)
    dropped, kept = ids[0, -1].item(), ids[0, 0].item()
    for pos, should_change in ((dropped, False), (kept, True)):
        other = video.clone()
        r, c = divmod(pos, enc.grid)
        other[0, 1, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 1.0
        diff = (enc(other, mask_noise=noise, keep=keep) - out).abs().max().item()
        assert (diff > 1e-6) == should_change, (pos, diff)


def test_position_embedding_interpolation() -> None:
    """Another resolution: the stored grid is resized bicubically (a constant grid stays constant), the CLS
    position is untouched, and the encoder runs at 48 px (6x6 patches) from a 32 px (4x4) model."""
    torch.manual_seed(0)
    enc = VisionEncoder(_cfg()).double()
    assert torch.equal(enc.patch_positions(4, 4), enc.positional_embedding[1:])
    with torch.no_grad():
        enc.positional_embedding[1:] = torch.arange(32, dtype=torch.float64)  # constant over the grid
    resized = enc.patch_positions(6, 5)
    assert resized.shape == (30, 32)
    assert_close(resized, torch.arange(32, dtype=torch.float64).expand(30, -1), rtol=1e-12, name="constant grid")
    torch.nn.init.normal_(enc.positional_embedding, std=0.02)
    out = enc(torch.randn(2, 2, 3, 48, 48, dtype=torch.float64))
    assert out.shape == (2, 2 * (1 + 36), 32) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert enc.positional_embedding.grad[1:].abs().sum() > 0  # the resize is differentiable


def test_bad_inputs() -> None:
    enc = VisionEncoder(_cfg())
    with pytest.raises(ValueError, match="multiples of patch_size"):
        enc(torch.randn(1, 1, 3, 30, 32))
    with pytest.raises(ValueError, match="max_frames"):
        enc(torch.randn(1, 9, 3, 32, 32))
    with pytest.raises(ValueError, match="mask_noise and keep"):
        enc(torch.randn(1, 1, 3, 32, 32), keep=3)
