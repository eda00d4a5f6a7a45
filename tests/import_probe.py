"""What ``tests/test_imports.py`` checks, run in pytest's process and in a child started in the repository root."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path


def probe() -> dict:
    """Import transformers' hub-kernels integration and scl_kernels (directly and through the model); report which
    ``kernels`` the import system found and whether any scl_kernels module was loaded under a second name."""
    import transformers.integrations.hub_kernels  # noqa: F401  (raised ImportError when kernels/ shadowed the hub)
    from transformers.utils.import_utils import is_kernels_available

    import scl_fast.model.scl  # noqa: F401  (reaches scl_kernels through the model, as training does)
    import scl_kernels

    try:
        hub_version = importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        hub_version = None
    try:
        kernels = importlib.import_module("kernels")
        kernels_file, has_get_kernel = getattr(kernels, "__file__", None), hasattr(kernels, "get_kernel")
    except ImportError:
        kernels_file, has_get_kernel = "not importable", False
    try:
        importlib.import_module("kernels.scl_kernels")
        second_copy = "imported"
    except ImportError as err:
        second_copy = str(err)
    ours = Path(scl_kernels.__file__).resolve().parent
    copies = sorted(name for name, mod in list(sys.modules.items())
                    if getattr(mod, "__file__", None) and Path(mod.__file__).resolve().parent == ours
                    and name != "scl_kernels" and not name.startswith("scl_kernels."))
    return {"sys_path0": sys.path[0], "hub_version": hub_version, "kernels_file": kernels_file,
            "has_get_kernel": has_get_kernel, "is_kernels_available": is_kernels_available(),
            "scl_kernels_file": scl_kernels.__file__, "copies": copies, "second_copy": second_copy,
            "attention_is_shared": importlib.import_module("scl_kernels.attention")
            is sys.modules["scl_kernels"].attention}
