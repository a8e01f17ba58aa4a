"""The built-in policies of the route chain, one module each, every one a
``fastgw.policy.Policy`` declared with its ``PolicySpec`` (key, priority, schema):
``limits`` (rate_limit; and max_concurrent, a route key rather than a table), ``cors``,
``ip``, ``auth`` (auth, acl), ``headers`` (request_headers, response_headers).

``BUILTIN`` maps each configurable key to its spec: the config validates a route's (or
``[global]``'s) table of that name against the spec's schema, the snapshot builds it.

May import: fastgw.policy, fastgw.exchange, fastgw.errors, fastgw._core.
"""

from fastgw.policies import auth, cors, headers, ip, limits

BUILTIN = {spec.name: spec for module in (limits, cors, ip, auth, headers) for spec in module.SPECS}
