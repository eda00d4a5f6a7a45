"""Checkpoints: safetensors weights plus everything needed to continue bit-exactly, written atomically.

Layout of one checkpoint, ``RUN_DIR/checkpoints/step_00000100/``:

- ``model.safetensors``: the weights (tied tensors stored once; the aliases are in the file's metadata);
- ``train_state.pt``: optimizer, LR scheduler, grad scaler, trainer counters, and per rank the RNG states
  (torch CPU/CUDA, python, numpy, the step generator) and the data loader's position (``weights_only`` loadable);
- ``config.json``: the resolved config of the run;
- ``meta.json``: step, world size and the size and SHA-256 of every file above. Written last.

Everything is written into a hidden temporary folder next to the final one and renamed into place, so a
killed process leaves either a complete checkpoint or a temporary folder that ``latest_checkpoint`` ignores.
Loading verifies every checksum first: a corrupt checkpoint is an error, never a silent fresh start.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from scl_fast.errors import UserError

CKPT_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
CONFIG = "config.json"
META = "meta.json"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d{8})$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, or does not match the run that loads it."""


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Finished checkpoints of a run, oldest first (temporary folders of interrupted writes are not listed)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_RE.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest finished checkpoint of ``run_dir``, checksums verified; None when the run has none.

    A corrupt newest checkpoint raises (naming the older one to resume from by hand) instead of falling back:
    silently losing progress would hide a disk or copy problem.
    """
    found = list_checkpoints(run_dir)
    if not found:
        return None
    path = found[-1][1]
    try:
        verify(path)
    except CheckpointError as err:
        older = f"; the previous one is {found[-2][1]} (pass it as --train.resume)" if len(found) > 1 else ""
        raise CheckpointError(f"{err}{older}") from err
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | Path) -> dict[str, Any]:
    """Check that ``path`` is a complete checkpoint whose files match their recorded checksums; returns meta."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a folder)")
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupt: cannot read {META} ({err})") from err
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    for name, want in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} is missing")
        if file.stat().st_size != want["bytes"] or _sha256(file) != want["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its recorded checksum")
    return meta


def _dedup_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that alias an earlier one (tied embeddings), which safetensors refuses; returns the aliases."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        kept[name] = t.detach().contiguous().cpu()
    return kept, aliases


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """Every RNG of this process (numpy's array as a list, so ``torch.load(weights_only=True)`` reads it back)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), *rest[1:]))
    kind, keys, *tail = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *tail))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        if "generator" not in state:
            raise CheckpointError("checkpoint has no state for the step generator")
        generator.set_state(state["generator"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    config: dict[str, Any],
    world_size: int,
    keep: int,
    run_id: str | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep`` checkpoints of run ``run_id``
    (rank 0 only). Checkpoints of other runs in the folder are never deleted."""
    final = checkpoint_path(run_dir, step)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors, aliases = _dedup_shared(model_state)
    save_file(tensors, str(tmp / WEIGHTS), metadata={"aliases": json.dumps(aliases), "step": str(step)})
    torch.save(train_state, tmp / STATE)
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    files = {}
    for name in (WEIGHTS, STATE, CONFIG):
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    meta = {"format": FORMAT_VERSION, "step": step, "world_size": world_size, "run_id": run_id, "files": files}
    (tmp / META).write_text(json.dumps(meta, indent=2))
    with open(tmp / META, "rb+") as f:
        os.fsync(f.fileno())
    if final.exists():  # the same step written again (a resumed run): replace it, still never half-written
        old = root / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    lineage = [path for _, path in list_checkpoints(run_dir) if _run_id(path) == run_id]
    for path in lineage[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    return final


def _run_id(path: Path) -> str | None:
    """The run a checkpoint belongs to (None for checkpoints written before run ids, or unreadable ones)."""
    try:
        return json.loads((path / META).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint folder (or a bare ``.safetensors`` file), aliases restored."""
    path = Path(path)
    file = path / WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no weights at {file}")
    try:
        state = load_file(str(file))
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises SafetensorError/OSError/ValueError on damaged files
        raise CheckpointError(f"cannot read weights {file}: {err}") from err
    for name, target in json.loads(metadata.get("aliases", "{}")).items():
        state[name] = state[target]
    return state


def load_train_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of a damaged file
        raise CheckpointError(f"cannot read {Path(path) / STATE}: {err}") from err


def load_config(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {Path(path) / CONFIG}: {err}") from err


def diff_config(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (for mismatch errors)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_config(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out
