"""DALI decode + augment pipelines, CPU (``device_id=None``) and GPU (``device="mixed"``: nvJPEG, NVDEC).

Every random choice (crop window, flip, frame indices) is drawn on the host per sample and fed in with
``fn.external_source``, so DALI holds no RNG state: a restored data position reproduces the same pixels.
DALI fails a whole batch on one undecodable sample and the pipeline object is unusable afterwards, so the
caller validates samples first and, on a failure, rebuilds the pipeline and re-decodes that batch on the host
(see ``loader.Decoder``).

DALI is an optional dependency (the ``dali`` extra): this module imports it only when a pipeline is built, so the
loader can import it anywhere and choose the host decoders (``host.py``) where DALI is missing.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from scl_fast._optional import missing
from scl_fast.errors import ConfigError

from .host import CLIP_MEAN, CLIP_STD

DALI_MISSING = missing("nvidia.dali", "data.decoder='dali'") + " (or --data.decoder host)"


@functools.cache
def dali_available() -> bool:
    """Whether ``nvidia.dali`` imports here (tried once per process)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(device: str) -> str:
    """``auto`` -> ``gpu`` when CUDA is available, else ``cpu``; ``gpu`` without CUDA is a ValueError."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise ConfigError("data.device='gpu' but CUDA is not available")
    return device


def resolve_decoder(decoder: str) -> str:
    """``auto`` -> ``dali`` where DALI is installed, else ``host``; ``dali`` without DALI is a ValueError."""
    if decoder not in ("auto", "dali", "host"):
        raise ValueError(f"decoder must be 'auto', 'dali' or 'host', got {decoder!r}")
    if decoder == "auto":
        return "dali" if dali_available() else "host"
    if decoder == "dali" and not dali_available():
        raise ConfigError(DALI_MISSING)
    return decoder


def _augment(x, size: int, layout: str):
    from nvidia.dali import fn, types

    """Crop the host-chosen window, resize to size x size, flip, normalise with CLIP's mean/std (float32)."""
    anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
    shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
    flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
    x = fn.slice(x, anchor, shape, axis_names="HW", out_of_bounds_policy="trim_to_shape")
    return _resize_normalise(x, flip, size, layout)


def _resize_normalise(x, flip, size: int, layout: str):
    from nvidia.dali import fn, types

    x = fn.resize(x, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=True)
    return fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout=layout, mirror=flip,
                                    mean=[255 * m for m in CLIP_MEAN], std=[255 * s for s in CLIP_STD])


class DaliPipelines:
    """The three pipelines one rank needs, built lazily and rebuilt after a failure.

    * ``images``: encoded images -> (B, 1, 3, S, S); ROI decoding of the crop window.
    * ``videos``: encoded VP8/VP9/MJPEG (CPU) or NVDEC codecs (GPU) + frame indices -> (B, F, 3, S, S).
    * ``frames``: frames already decoded on the host (PyAV fallback, or a batch DALI rejected) -> same output.
    """

    def __init__(self, *, image_size: int, batch_size: int, device: str, threads: int, device_id: int = 0) -> None:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if not dali_available():
            raise ConfigError(DALI_MISSING)
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.threads = threads
        self.device_id = device_id if device == "gpu" else None
        self._pipes: dict[str, Any] = {}

    def _build(self, kind: str) -> Any:
        from nvidia.dali import Pipeline, fn, types

        decoder_device = "mixed" if self.device == "gpu" else "cpu"
        pipe = Pipeline(batch_size=self.batch_size, num_threads=self.threads, device_id=self.device_id,
                        exec_dynamic=True, prefetch_queue_depth=1)
        with pipe:
            if kind == "images":
                enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
                anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
                shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
                flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
                # EXIF orientation ignored, as in the host (PIL) fallback, so the host-chosen window stays valid.
                x = fn.decoders.image_slice(enc, anchor, shape, axis_names="HW", device=decoder_device,
                                            output_type=types.RGB, adjust_orientation=False)
                pipe.set_outputs(_resize_normalise(x, flip, self.image_size, "CHW"))
            elif kind == "videos":
                enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
                idx = fn.external_source(name="idx", dtype=types.INT32, ndim=1)
                # pad_mode="edge": a clip whose decodable frames end early repeats its last frame.
                x = fn.decoders.video(enc, device=decoder_device, frames=idx, pad_mode="edge")
                pipe.set_outputs(_augment(x, self.image_size, "FCHW"))
            elif kind == "frames":
                x = fn.external_source(name="frames", dtype=types.UINT8, ndim=4, layout="FHWC")
                if self.device == "gpu":
                    x = x.gpu()
                pipe.set_outputs(_augment(x, self.image_size, "FCHW"))
            else:
                raise ValueError(f"unknown pipeline kind {kind!r}")
        pipe.build()
        return pipe

    def run(self, kind: str, windows: np.ndarray, flips: np.ndarray, **inputs: list[np.ndarray]) -> torch.Tensor:
        """Run pipeline ``kind`` on one batch. ``windows``: float32 (B, 4) = (y0, x0, h, w) relative to the
        decoded size; ``flips``: (B,) bool. Returns float32 (B, F, 3, S, S) on the pipeline's device.

        Raises whatever DALI raises; the pipeline is dropped first so the next call builds a fresh one.
        """
        n = len(windows)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"batch of {n} samples for a pipeline built for at most {self.batch_size}")
        if kind not in self._pipes:
            self._pipes[kind] = self._build(kind)  # outside the try: a build error is a bug, not bad data
        pipe = self._pipes[kind]
        try:
            for name, values in inputs.items():
                pipe.feed_input(name, values)
            pipe.feed_input("anchor", [np.ascontiguousarray(w[:2], dtype=np.float32) for w in windows])
            pipe.feed_input("shape", [np.ascontiguousarray(w[2:], dtype=np.float32) for w in windows])
            pipe.feed_input("flip", [np.array(int(f), dtype=np.int32) for f in flips])
            (out,) = pipe.run()
        except Exception:
            del self._pipes[kind]  # DALI: "Current pipeline object is no longer valid" after any error
            raise
        pixels = _to_torch(out)
        return pixels.unsqueeze(1) if kind == "images" else pixels


def _to_torch(out: Any) -> torch.Tensor:
    """Copy a dense DALI TensorList (CPU or GPU) to a torch tensor on the same device."""
    from nvidia.dali.backend import TensorListGPU

    if isinstance(out, TensorListGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = out.as_tensor()
        result = torch.empty(dense.shape(), dtype=torch.float32, device=torch.device("cuda", dense.device_id()))
        stream = torch.cuda.current_stream(result.device)
        feed_ndarray(dense, result, cuda_stream=stream)
        # The loader may call this from its prefetch thread, whose current stream is not the consumer's: wait
        # here (in the background) so the consumer never reads a half-copied batch on another stream.
        stream.synchronize()
        return result
    return torch.from_numpy(out.as_array())
