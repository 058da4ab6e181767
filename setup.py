"""Build of the data plane: csrc/ (plain C) plus the Cython wrapper.

Metadata lives in pyproject.toml; this file only lists the extension.
MEDIAFORK_DEBUG=1 builds with assertions, no optimisation and debug symbols;
MEDIAFORK_SANITIZE=address,undefined adds sanitizers (for tests and fuzzing).
"""

import os
from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("MEDIAFORK_DEBUG") == "1"
sanitize = os.environ.get("MEDIAFORK_SANITIZE", "")

compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-unused-function", "-Wno-sign-compare", "-Wno-missing-field-initializers"]
link_args = ["-pthread"]
if debug:
    compile_args += ["-O0", "-g", "-UNDEBUG"]
else:
    compile_args += ["-O2", "-g1"]
if sanitize:
    compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    link_args += [f"-fsanitize={sanitize}"]

c_sources = sorted(glob("csrc/*.c"))

extensions = [
    Extension(
        "mediafork.media._fastpath",
        sources=["mediafork/media/_fastpath.pyx", *c_sources],
        include_dirs=["csrc"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("_GNU_SOURCE", "1")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=os.environ.get("MEDIAFORK_ANNOTATE") == "1",
    )
)
