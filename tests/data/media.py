"""Builders of test media and shards (plain PIL / PyAV / tarfile, independent of the code under test)."""

from __future__ import annotations

import io
import json
import tarfile

import av
import numpy as np
from PIL import Image


def image_bytes(rgb: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (48, 40), fmt: str = "JPEG",
                mode: str = "RGB", alpha: int | None = None) -> bytes:
    """A solid-colour image ``size`` = (width, height), converted to ``mode`` before encoding.

    ``alpha`` (RGBA only) sets a uniform transparency, so a decoder that blends instead of dropping alpha shows.
    """
    img = Image.new("RGB", size, rgb).convert(mode)
    if alpha is not None:
        img.putalpha(alpha)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def video_bytes(frames: int = 8, size: int = 32, codec: str = "libvpx-vp9", fmt: str = "webm") -> bytes:
    """Frame t is a flat gray of value 20 + 25 * t, so the decoded value tells which frame was sampled."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0", "lag-in-frames": "0"}
        for t in range(frames):
            arr = np.full((size, size, 3), 20 + 25 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def noise_jpeg(size: int = 64, seed: int = 0) -> bytes:
    """A JPEG of random pixels: a long entropy-coded body, so cutting it leaves a valid header and a broken body."""
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    """A tar of ``(name, payload)`` members in the given order, as img2dataset writes them."""
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def caption_json(text: str) -> bytes:
    return json.dumps({"caption": text, "url": "http://example.invalid/x", "width": 48}).encode()
