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
# NVDEC's smallest frame per codec, (width, height), from the capability table of NVIDIA's NVDEC programming
# guide. DALI fails the whole batch on a clip below it (and must rebuild its pipeline), so such clips go to PyAV.
NVDEC_MIN_SIZE = {"h264": (48, 16), "mpeg4": (48, 16), "vp8": (48, 16), "mjpeg": (64, 64), "hevc": (144, 144),
                  "vp9": (128, 128), "av1": (128, 128)}


def dali_decodes(info: VideoInfo, device: str, capability: tuple[int, int] | None = None) -> bool:
    """Whether DALI's video decoder on ``device`` takes this clip; otherwise PyAV decodes it in a loader worker.

    ``capability``: the GPU's compute capability. AV1 decoding is in NVDEC from GA10x (sm_86) and Ada (sm_89)
    on and in Blackwell (sm_100+), not in GA100 (sm_80) or Hopper (sm_90).
    """
    if device == "cpu":
        return info.codec in DALI_CPU_CODECS
    if info.codec not in DALI_GPU_CODECS:
        return False
    if info.codec == "av1" and (capability is None or not (capability in ((8, 6), (8, 7), (8, 9))
                                                            or capability[0] >= 10)):
        return False
    min_w, min_h = NVDEC_MIN_SIZE.get(info.codec, (1, 1))
    return info.width >= min_w and info.height >= min_h


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
