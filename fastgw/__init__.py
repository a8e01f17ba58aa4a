"""fastgw: an API gateway with a native hot path.

The request's life, module by module: ``protocols/`` (wire → Exchange) →
``proxy`` (route, policies, errors → status codes) → ``upstream`` (pooled
HTTP/1.1 connections). ``config`` turns TOML into frozen data, ``snapshot``
compiles it into what a request reads, ``server`` runs processes and reloads,
``cli`` is the command line. ``_core`` is the Cython leaf.
"""

__version__ = "0.1.0"
