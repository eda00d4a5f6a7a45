"""Build scl_fast and scl_kernels; the native extension scl_kernels._C is built by CMakeLists.txt.

Torch must already be installed (its CMake package is found through ``torch.utils.cmake_prefix_path``),
so install with ``pip install --no-build-isolation``: build isolation would pull a multi-GB CUDA torch
just to compile CPU kernels. If the native build fails the package still works: every op falls back to
its plain PyTorch reference (see kernels/scl_kernels/_dispatch.py), and ``SCL_REQUIRE_NATIVE=1`` makes that an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            self._cmake(ext)
        except (OSError, subprocess.CalledProcessError) as err:
            if os.environ.get("SCL_REQUIRE_NATIVE") == "1":
                raise
            print(f"warning: native extension not built ({err}); ops use their PyTorch references", file=sys.stderr)

    def _cmake(self, ext: Extension) -> None:
        import torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = shutil.which("cmake") or "cmake"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.check_call(
            [
                cmake,
                "-S",
                str(ROOT),
                "-B",
                str(build_dir),
                *generator,
                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                f"-DPython3_EXECUTABLE={sys.executable}",
                f"-DSCL_OUTPUT_DIR={out_dir}",
                "-DCMAKE_BUILD_TYPE=Release",
            ]
        )
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 1)])


setup(
    # scl_kernels' subpackages by hand: find_packages would look for them under the repository root, not kernels/
    packages=["scl_kernels", "scl_kernels.attention", *find_packages(include=["scl_fast", "scl_fast.*"])],
    package_data={"scl_kernels.attention": ["crossover.json"]},  # backend="auto"'s measured table
    ext_modules=[CMakeExtension("scl_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
)
