"""Host decoding and augmentation: PIL for images, PyAV for video, torch for the crop-resize.

The decoder that needs nothing beyond the core requirements, so a plain ``pip install`` trains on images and videos.
It runs in the loader's worker processes, in parallel, and hands the main process uint8 pixels at the training
size; :func:`normalise` then makes the float batch. The steps and their order are DALI's (``dali.py``): crop the
window chosen on the host, antialiased bilinear resize to S x S with a uint8 result, flip, CLIP normalisation, so
the two decoders agree to within a few grey levels on the same windows (resize filters and JPEG IDCTs differ a
little; ``tests/data/test_read.py`` bounds it).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image -> uint8 (1, H, W, 3) RGB (grayscale, palette, CMYK and alpha converted; EXIF orientation
    ignored, as DALI is told to, so the window chosen from the header's size stays valid)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))[None]


def augment(frames: np.ndarray, window: np.ndarray, flip: bool, size: int) -> np.ndarray:
    """Crop ``window`` (relative (y0, x0, h, w)) out of uint8 (F, H, W, 3) frames, resize to (F, size, size, 3)
    uint8 with an antialiased bilinear filter, and mirror if ``flip``."""
    h, w = frames.shape[1:3]
    y0, x0, ch, cw = (float(v) for v in window)
    top, left = min(h - 1, round(y0 * h)), min(w - 1, round(x0 * w))
    bottom, right = max(top + 1, min(h, round((y0 + ch) * h))), max(left + 1, min(w, round((x0 + cw) * w)))
    crop = torch.from_numpy(np.array(frames[:, top:bottom, left:right])).permute(0, 3, 1, 2)  # a writable copy
    out = F.interpolate(crop.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if flip:
        out = out.flip(-1)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, F, S, S, 3) -> float32 (B, F, 3, S, S), CLIP-normalised (what the model reads)."""
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(3, 1, 1) * 255
    std = torch.tensor(CLIP_STD, device=pixels.device).view(3, 1, 1) * 255
    return (pixels.permute(0, 1, 4, 2, 3).float() - mean) / std
