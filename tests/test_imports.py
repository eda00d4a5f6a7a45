"""Imports from the repository root: ``kernels/`` never shadows Hugging Face's ``kernels``, ``scl_kernels`` loads once.

pytest (rootdir on ``sys.path`` because ``tests/`` is a package), ``python -m`` and ``python -c`` (the working
directory first on ``sys.path``) and notebooks started in the checkout all put the repository root ahead of
site-packages. transformers >= 5.25 then imports ``kernels`` (Hugging Face's kernel hub) when it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .import_probe import probe

ROOT = Path(__file__).resolve().parents[1]

def _check(result: dict) -> None:
    root_kernels = str(ROOT / "kernels")
    assert result["scl_kernels_file"].startswith(str(ROOT / "kernels" / "scl_kernels")), result
    if result["hub_version"] is not None:  # Hugging Face's kernels is installed: `import kernels` must be it
        assert result["kernels_file"] is not None and not result["kernels_file"].startswith(root_kernels), result
        assert result["has_get_kernel"], result
    else:  # not installed: nothing usable named kernels, and transformers must see it as absent
        assert result["kernels_file"] in (None, "not importable"), result
        assert not result["is_kernels_available"], result
    assert result["copies"] == [], f"scl_kernels modules loaded a second time: {result['copies']}"
    assert result["attention_is_shared"]
    assert result["second_copy"] != "imported", "kernels.scl_kernels imported a second copy of scl_kernels"


def test_transformers_gets_hub_kernels_in_pytest() -> None:
    pytest.importorskip("transformers")
    assert str(ROOT) in [str(Path(p).resolve()) for p in sys.path if p], "pytest should have put the root on sys.path"
    _check(probe())


def test_transformers_gets_hub_kernels_from_the_repository_root() -> None:
    pytest.importorskip("transformers")
    code = "import json; from tests.import_probe import probe; print(json.dumps(probe()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sys_path0"] == "", result  # python -c: the working directory (the root) comes first
    _check(result)


def test_scl_kernels_refuses_a_second_name() -> None:
    """Loaded under another name (``kernels.scl_kernels`` from the root where the hub package is absent), the
    package refuses with a message instead of registering its torch.library ops twice."""
    spec = importlib.util.spec_from_file_location(
        "kernels.scl_kernels", ROOT / "kernels" / "scl_kernels" / "__init__.py",
        submodule_search_locations=[str(ROOT / "kernels" / "scl_kernels")])
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match="import this package as scl_kernels"):
        spec.loader.exec_module(module)
