"""Build the Cython hot path in fastgw/_core. Everything else is in pyproject.toml.

FASTGW_DEBUG=1 builds with line tracing, the annotate HTML (``cython -a``) and
``FASTGW_DEBUG`` defined, for profiling and invariant checks.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTGW_DEBUG") == "1"

CORE_MODULES = ["router"]

extensions = [
    Extension(
        f"fastgw._core.{name}",
        [f"fastgw/_core/{name}.pyx"],
        extra_compile_args=["-O2"],
        define_macros=[("CYTHON_TRACE", "1"), ("FASTGW_DEBUG", "1")] if DEBUG else [],
    )
    for name in CORE_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=DEBUG,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "linetrace": DEBUG,
            "embedsignature": True,
        },
    ),
)
