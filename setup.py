"""Build of the data plane: csrc/ (plain C) plus the Cython wrapper.

Metadata lives in pyproject.toml; this file only lists the extension.
MEDIAFORK_DEBUG=1 builds with assertions, no optimisation and debug symbols;
MEDIAFORK_SANITIZE=address,undefined adds sanitizers (for tests and fuzzing).
OpenSSL's headers, where found (Debian: libssl-dev), add the lean SRTP sender
transform (csrc/srtp_cm.h) and link libcrypto; without them, or with
MEDIAFORK_OPENSSL=0, every SRTP suite goes through libsrtp alone.
"""

import os
import tempfile
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



def have_openssl() -> bool:
    """OpenSSL 3's headers and libcrypto, by compiling and linking a probe."""
    if os.environ.get("MEDIAFORK_OPENSSL", "") == "0":
        return False
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CompileError, LinkError
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.c")
        with open(probe, "w") as f:
            f.write("#define OPENSSL_SUPPRESS_DEPRECATED 1\n#include <openssl/evp.h>\n"
                    "#include <openssl/sha.h>\nint main(void) { SHA_CTX c; SHA1_Init(&c);"
                    " return EVP_CIPHER_fetch(NULL, \"AES-128-ECB\", NULL) == NULL; }\n")
        try:
            objects = compiler.compile([probe], output_dir=tmp)
            compiler.link_executable(objects, os.path.join(tmp, "probe"), libraries=["crypto"])
        except (CompileError, LinkError):
            return False
    return True


c_sources = sorted(glob("csrc/*.c"))
define_macros = [("_GNU_SOURCE", "1")]
libraries = []
if have_openssl():
    define_macros.append(("MF_HAVE_OPENSSL", "1"))
    libraries.append("crypto")

extensions = [
    Extension(
        "mediafork.media._fastpath",
        sources=["mediafork/media/_fastpath.pyx", *c_sources],
        include_dirs=["csrc"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=define_macros,
        libraries=libraries,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True},
        annotate=os.environ.get("MEDIAFORK_ANNOTATE") == "1",
    )
)
