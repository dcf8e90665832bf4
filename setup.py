"""Builds the optional native extension `cof_edge._preprocess` (cpp_ext/preprocess.cpp).

All project metadata lives in pyproject.toml; this file only declares the C++ extension. The build is
optional: without a working C++17 compiler `pip install` still succeeds and cof_edge.preprocess falls
back to numpy + Pillow (same outputs, slower). Set COF_EDGE_REQUIRE_NATIVE=1 to make a failed build fatal.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRE_NATIVE = os.environ.get("COF_EDGE_REQUIRE_NATIVE", "").lower() in ("1", "true", "yes")

HINT = (
    "cof-edge: the native preprocessing extension (cof_edge._preprocess) was NOT built; "
    "cof_edge.preprocess will use the slower numpy/Pillow fallback. Install a C++17 compiler "
    "(e.g. g++ and the Python development headers) and run `pip install -e .` again, or "
    "`python setup.py build_ext --inplace`."
)


class OptionalBuildExt(build_ext):
    """Compiles the extension when it can; otherwise prints one clear message and carries on."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing entirely (distutils raises various errors)
            self._failed(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc):
        if REQUIRE_NATIVE:
            raise
        print(f"\n{HINT}\n  reason: {exc}\n", file=sys.stderr)


def _compile_args() -> list[str]:
    if sys.platform == "win32":
        return ["/O2", "/std:c++17", "/EHsc"]
    # -Wno-psabi: the 32-byte vector helpers are always inlined, so the AVX ABI note does not apply.
    return ["-O3", "-std=c++17", "-fvisibility=hidden", "-pthread", "-Wno-psabi"]


ext = Extension(
    "cof_edge._preprocess",
    sources=["cpp_ext/preprocess.cpp"],
    depends=["cpp_ext/kernels.inc", "cpp_ext/madd_kernels.inc"],
    language="c++",
    extra_compile_args=_compile_args(),
    extra_link_args=[] if sys.platform == "win32" else ["-pthread"],
    optional=not REQUIRE_NATIVE,
)

setup(ext_modules=[ext], cmdclass={"build_ext": OptionalBuildExt})
