"""Video helpers on the host: probing with PyAV (codec, frame count), uniform frame sampling, PyAV decoding.

DALI decodes VP8/VP9/MJPEG on the CPU and NVDEC codecs on the GPU; every other sample is decoded here, in the
loader workers, so one exotic codec costs a fallback and not a failed batch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

# Decoder names PyAV may report, mapped to the codec they decode.
_CODEC_ALIASES = {"libdav1d": "av1", "libaom-av1": "av1", "libvpx-vp9": "vp9", "libvpx": "vp8", "h265": "hevc"}
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"vp8", "vp9", "mjpeg", "av1", "mpeg4", "h264", "hevc"})


@dataclass
class VideoInfo:
    codec: str
    frames: int  # frames counted by demuxing (no decoding)
    height: int
    width: int


def probe_video(data: bytes) -> VideoInfo:
    """Codec, size and frame count of an encoded video, read by demuxing only (cheap: no pixels decoded).

    Raises:
        ValueError: the container cannot be opened, has no video stream, or holds no video packets.
    """
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            name = stream.codec_context.name
            height, width = stream.codec_context.height, stream.codec_context.width
            frames = sum(1 for p in container.demux(stream) if p.size)
    except (av.FFmpegError, OSError, EOFError) as e:
        raise ValueError(f"unreadable video: {e}") from e
    if frames == 0 or height <= 0 or width <= 0:
        raise ValueError(f"no video frames (frames={frames}, size={width}x{height})")
    return VideoInfo(_CODEC_ALIASES.get(name, name), frames, height, width)


def sample_frame_indices(num_frames: int, count: int, rng: np.random.Generator | None) -> np.ndarray:
    """``count`` frame indices spread uniformly over ``num_frames`` (int32, non-decreasing).

    The clip is cut into ``count`` equal segments; training (``rng`` given) takes a random frame in each
    segment, evaluation its middle. With fewer frames than ``count`` indices repeat (the short-video repair).
    """
    if num_frames < 1 or count < 1:
        raise ValueError(f"need num_frames >= 1 and count >= 1, got {num_frames}, {count}")
    offsets = rng.random(count) if rng is not None else np.full(count, 0.5)
    idx = np.floor((np.arange(count) + offsets) * (num_frames / count)).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1).astype(np.int32)


def decode_frames_pyav(data: bytes, indices: np.ndarray) -> np.ndarray:
    """Decode the frames at ``indices`` (may repeat) to uint8 (F, H, W, 3) RGB.

    Indices past the last decodable frame take the last decoded frame (a truncated tail is repaired the same
    way DALI's ``pad_mode="edge"`` does).

    Raises:
        ValueError: no frame can be decoded.
    """
    wanted = set(int(i) for i in indices)
    last_needed = max(wanted)
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            for n, frame in enumerate(container.decode(stream)):
                if n in wanted:
                    got[n] = frame.to_ndarray(format="rgb24")
                if n >= last_needed:
                    break
    except (av.FFmpegError, OSError, EOFError, IndexError) as e:
        if not got:
            raise ValueError(f"undecodable video: {e}") from e
    if not got:
        raise ValueError("no decodable frame")
    fallback = got[max(got)]
    return np.stack([got.get(int(i), fallback) for i in indices])
