"""A fastgw plugin: the tenant of an API key, from a lookup table in the config.

    [plugins]
    paths = ["plugins"]                 # the folder this file is in

    [routes.tenant_header]
    tenants = { "k-1234" = "acme", "k-5678" = "globex" }
    # header = "x-tenant"               # where the tenant goes (the default)
    # key_header = "x-api-key"          # where the key comes from (the default)

A request with a known key goes upstream with ``X-Tenant: acme`` and without its key;
one without, or with an unknown key, is answered 403. Every response says which tenant
it served (``X-Served-Tenant``).
"""

from fastgw.plugin import REQUIRED, Answer

NAME = "tenant_header"
PRIORITY = 450  # after the rate limits (1000) and request_headers (500), before response_headers
SCHEMA = {
    "tenants": ("table", REQUIRED),
    "header": ("string", "x-tenant"),
    "key_header": ("string", "x-api-key"),
}


def check(config):
    """What no single key can say: every tenant is a non-empty string."""
    bad = [key for key, tenant in config["tenants"].items() if not isinstance(tenant, str) or not tenant]
    return [("tenants", f"the tenant of {key!r} is not a name") for key in bad]


def request(req):
    key = req.header(req.config["key_header"])
    tenant = req.config["tenants"].get(key)
    if tenant is None:
        return Answer(403, "unknown API key")
    req.remove_header(req.config["key_header"])  # the backend needs the tenant, not the key
    req.set_header(req.config["header"], tenant)
    req.state["tenant"] = tenant


def response(req, resp):
    resp.set("x-served-tenant", req.state.get("tenant", "-"))
