"""Build the Cython hot path: the pure core (fastgw/_core) and the request path that
drives it (the exchange, the HTTP/1 front end, the proxy, the upstream relay).
Everything else is in pyproject.toml.

FASTGW_DEBUG=1 builds with line tracing, the annotate HTML (``cython -a``) and
``FASTGW_DEBUG`` defined, for profiling and invariant checks.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTGW_DEBUG") == "1"

COMPILED_MODULES = [
    "fastgw._core.router",
    "fastgw._core.wire",
    "fastgw._core.balancer",
    "fastgw._core.targets",
    "fastgw._core.limiter",
    "fastgw.exchange",
    "fastgw.upstream",
    "fastgw.ratelimit",
    "fastgw.proxy",
    "fastgw.protocols.http1",
]

extensions = [
    Extension(
        name,
        [name.replace(".", "/") + ".pyx"],
        extra_compile_args=["-O2"],
        define_macros=[("CYTHON_TRACE", "1"), ("FASTGW_DEBUG", "1")] if DEBUG else [],
    )
    for name in COMPILED_MODULES
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
