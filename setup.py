"""Build the Cython hot path: the pure core (fastgw/_core) and the request path that
drives it (the exchange, the HTTP/1 front end, the proxy and the route plan it reads, the
upstream relay).
Everything else is in pyproject.toml.

FASTGW_DEBUG=1 builds with line tracing, the annotate HTML (``cython -a``) and
``FASTGW_DEBUG`` defined, for profiling and invariant checks.

One build, not two: ``setup.py build_ext --inplace`` compiles into ``build/`` and copies
the modules next to their sources; ``pip install -e .`` builds in a temporary folder of
its own, and would compile every module again. So an extension whose in-place module is
newer than its C source (and that source newer than its .pyx/.pxd, which cythonize sees
to) is copied, not compiled: the Makefile builds in place first, then installs
(``--no-build-isolation``, so that both use the same Cython and the C sources stay
valid), and ``make compile`` recompiles only what changed. ``--force`` compiles all.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.modified import newer, newer_group

DEBUG = os.environ.get("FASTGW_DEBUG") == "1"

COMPILED_MODULES = [
    "fastgw._core.router",
    "fastgw._core.wire",
    "fastgw._core.balancer",
    "fastgw._core.targets",
    "fastgw._core.limiter",
    "fastgw._core.metrics",
    "fastgw.exchange",
    "fastgw.socket_writes",
    "fastgw.upstream",
    "fastgw.policy",
    "fastgw.plan",
    "fastgw.policies.limits",
    "fastgw.policies.ip",
    "fastgw.policies.headers",
    "fastgw.policies.cors",
    "fastgw.policies.auth",
    "fastgw.proxy",
    "fastgw.protocols.http1",
    "fastgw.protocols.http2",
]

# The HTTP/2 front end links the system's libnghttp2 (the library nginx's and Envoy's
# peers build on); Debian carries the Rapid Reset and CONTINUATION-flood fixes in its
# libnghttp2-dev.
LIBRARIES = {"fastgw.protocols.http2": ["nghttp2"]}
NGHTTP2_HEADER = "nghttp2/nghttp2.h"

# The HTTP/1.1 front end parses requests with llhttp, vendored (vendor/llhttp: the same
# release httptools 0.9.0 builds on), its C compiled into the module. Its symbols are kept
# inside the module (hidden visibility): httptools' extension carries the same names.
LLHTTP = "vendor/llhttp"
C_SOURCES = {"fastgw.protocols.http1": [f"{LLHTTP}/src/api.c", f"{LLHTTP}/src/http.c", f"{LLHTTP}/src/llhttp.c"]}
INCLUDE_DIRS = {"fastgw.protocols.http1": [f"{LLHTTP}/include"]}
DEPENDS = {"fastgw.protocols.http1": [f"{LLHTTP}/include/llhttp.h"]}
HIDDEN_SYMBOLS = {"fastgw.protocols.http1"}


def _require_nghttp2() -> None:
    include_dirs = ["/usr/include", "/usr/local/include",
                    *os.environ.get("CPATH", "").split(os.pathsep), *os.environ.get("C_INCLUDE_PATH", "").split(os.pathsep)]
    if not any(d and os.path.exists(os.path.join(d, NGHTTP2_HEADER)) for d in include_dirs):
        raise SystemExit(
            "fastgw: the HTTP/2 front end needs libnghttp2's headers (nghttp2/nghttp2.h), not found.\n"
            "  On Debian or Ubuntu: apt-get install libnghttp2-dev\n"
            "  (elsewhere: the nghttp2 development package; or set CPATH to its include folder)")


_require_nghttp2()

extensions = [
    Extension(
        name,
        [name.replace(".", "/") + ".pyx", *C_SOURCES.get(name, [])],
        extra_compile_args=["-O2", *(["-fvisibility=hidden"] if name in HIDDEN_SYMBOLS else [])],
        libraries=LIBRARIES.get(name, []),
        include_dirs=INCLUDE_DIRS.get(name, []),
        depends=DEPENDS.get(name, []),
        define_macros=[("CYTHON_TRACE", "1"), ("FASTGW_DEBUG", "1")] if DEBUG else [],
    )
    for name in COMPILED_MODULES
]


class BuildExt(build_ext):
    """build_ext that reuses an up-to-date in-place module instead of compiling it again."""

    def build_extension(self, ext: Extension) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        in_place = os.path.join(here, self.get_ext_filename(self.get_ext_fullname(ext.name)))
        target = self.get_ext_fullpath(ext.name)
        if (not self.force and os.path.abspath(target) != in_place and os.path.exists(in_place)
                and not newer_group([os.path.join(here, f) for f in (*ext.sources, *ext.depends)], in_place)
                and (not os.path.exists(target) or newer(in_place, target))):
            self.mkpath(os.path.dirname(target))
            self.copy_file(in_place, target)  # keeps the time: still newer than its sources
            return
        super().build_extension(ext)


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=DEBUG,
        nthreads=os.cpu_count() or 1,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "linetrace": DEBUG,
            "embedsignature": True,
        },
    ),
)
