"""The GPU path (``device="mixed"``: nvJPEG, NVDEC, augmentation on the GPU). Runs only where CUDA exists.

The same evaluation batches (centre crops, no randomness) go through the CPU and the GPU pipelines; the two
decoders and resize kernels differ by a few levels at most, a wrong crop, flip or normalisation by tens.
"""

from __future__ import annotations

import pytest
import torch

from scl_fast.data import DataConfig, build_loader
from scl_fast.data.dali import CLIP_STD

from .media import image_bytes, video_bytes, write_tar

pytestmark = pytest.mark.cuda
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _by_key(loader) -> dict[str, torch.Tensor]:
    out = {}
    for batch in loader:
        assert batch.pixels.dtype == torch.float32
        for i, key in enumerate(batch.keys):
            out[key] = batch.pixels[i]
    return out


def test_gpu_pipeline_matches_cpu(demo_corpus: dict[str, str]) -> None:
    kw = dict(train=demo_corpus["train"], val=demo_corpus["val"], batch_size=8, num_workers=0)
    gpu_loader = build_loader(DataConfig(device="gpu", **kw), "val")
    first = next(iter(gpu_loader))
    assert first.pixels.is_cuda, "the GPU path must hand out pixels on the GPU"
    gpu = {k: v.cpu() for k, v in _by_key(build_loader(DataConfig(device="gpu", **kw), "val")).items()}
    cpu = _by_key(build_loader(DataConfig(device="cpu", **kw), "val"))
    assert sorted(gpu) == sorted(cpu) and len(cpu) == 28
    for key, pixels in cpu.items():
        assert gpu[key].shape == pixels.shape
        assert bool(torch.isfinite(gpu[key]).all())
        levels = float(((gpu[key] - pixels) * STD.to(pixels)).abs().mean() * 255)
        assert levels < 4.0, f"{key}: GPU and CPU pipelines differ by {levels:.1f} levels on average"


def test_gpu_training_batches_and_codecs(tmp_path) -> None:
    """Augmented training batches on the GPU: an H.264 clip (NVDEC, which DALI's CPU decoder lacks), a VP9 clip
    below NVDEC's smallest VP9 frame (PyAV in the worker), a grayscale JPEG (nvJPEG)."""
    write_tar(str(tmp_path / "g.tar"), [
        ("a.jpg", image_bytes((255, 0, 0))), ("a.txt", b"red"),
        ("b.jpg", image_bytes((90, 90, 90), mode="L")), ("b.txt", b"gray"),
        ("c.mp4", video_bytes(frames=8, size=64, codec="libx264", fmt="mp4")), ("c.txt", b"an h264 clip"),
        ("d.webm", video_bytes(frames=8, size=32)), ("d.txt", b"a vp9 clip"),
    ])
    spec = str(tmp_path / "g.tar")
    cfg = DataConfig(train=spec, val=spec, image_size=32, frames=3, batch_size=4, num_workers=0, device="gpu")
    loader = build_loader(cfg, "train", epochs=1, drop_last=False)
    batches = list(loader)
    assert sorted(k for b in batches for k in b.keys) == ["a", "b", "c", "d"]
    assert all(b.pixels.is_cuda and b.pixels.shape[1] in (1, 3) for b in batches)
    assert loader.stats.good == 4 and loader.stats.repaired["converted_to_rgb"] == 1
    assert loader.stats.info["pyav_fallback"] == 1, "only the 32 px VP9 clip goes to PyAV; H.264 goes to NVDEC"
    assert loader.stats.info["host_decode"] == 0, "DALI rejected a batch on the GPU"
