"""fastgw's exception tree.

Every error that can end a request carries the HTTP ``status`` it maps to (h11's
``error_status_hint`` idea); ``proxy.pyx`` is the one place that turns them into
responses. The message is the detail, for the error log; ``public`` is what the client
is told when the detail would show the inside of the network (an upstream's address, a
DNS failure), so an upstream error's body says only "upstream unavailable". ``ConfigError`` carries every problem found in a config file at once.

May import: the standard library only.
"""

from __future__ import annotations


class FastGWError(Exception):
    """Base of every fastgw error. ``status`` is the HTTP answer it maps to."""

    status = 500
    #: the client's message, when it must not be the detail (None: the detail is fine)
    public: str | None = None


class ConfigError(FastGWError):
    """A config file that cannot be used. ``errors`` lists every problem, each a full
    line that names its place (``fastgw.toml: routes[2] "orders": ...``)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class BadRequest(FastGWError):
    """Malformed request or framing: 400 and the connection is closed."""

    status = 400


class RequestTimeout(FastGWError):
    """The request head or body did not arrive in time."""

    status = 408


class PayloadTooLarge(FastGWError):
    """The request body is over ``max_body_bytes``."""

    status = 413


class ClientClosedRequest(FastGWError):
    """The client went away before its response was complete (nginx's 499, logged only)."""

    status = 499


class UpstreamError(FastGWError):
    """The upstream refused, reset or answered garbage."""

    status = 502
    public = "upstream unavailable"


class UpstreamRetryable(UpstreamError):
    """The upstream answered 502 or 503 to a request that may go to another target: the
    response is dropped unread and the proxy retries (``retries``)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upstream answered {status}")
        #: when no other target is left after all, the client gets that status
        self.status = status


class UpstreamTimeout(FastGWError):
    """The upstream did not answer within its timeout (or the route deadline passed)."""

    status = 504
    public = "upstream timed out"


class NoTarget(FastGWError):
    """No target can take the request (none healthy, or all circuits open)."""

    status = 503
