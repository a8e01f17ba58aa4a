# cython: boundscheck=True, wraparound=True
"""``ip``: allow and deny lists of networks on the client address, per route and in
``[global]``.

The client address is the one the proxy settled on: the peer, or the address its
``X-Forwarded-For`` names when the peer is in ``trusted_proxies``. A denied address is
refused with 403 before anything else it would cost (the policy runs early, priority
3000). Deny wins over allow; with an ``allow`` list, an address in none of its networks
is refused too. IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) are judged as IPv4.

Each verdict is kept per address (clients repeat; at most ``CACHE_SIZE`` addresses, then
forgotten at once), so a request costs a dict lookup, not a parse and a network walk.

May import: the standard library, fastgw.policy, fastgw.exchange.
"""

import ipaddress

from fastgw.exchange cimport Exchange
from fastgw.policy cimport CONTINUE, Policy, answer
from fastgw.policy import PolicySpec

PRIORITY = 3000
CACHE_SIZE = 4096


cdef class IpFilter(Policy):
    cdef readonly tuple allow, deny
    cdef dict verdicts

    def __init__(self, str owner, allow, deny):
        Policy.__init__(self, "ip", owner, PRIORITY, request=True)
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.verdicts = {}

    cpdef int request(self, Exchange ex) except -1:
        ip = ex.client_ip
        allowed = self.verdicts.get(ip)
        if allowed is None:
            allowed = self.judge(ip)
            if len(self.verdicts) >= CACHE_SIZE:
                self.verdicts.clear()
            self.verdicts[ip] = allowed
        if allowed:
            return CONTINUE
        return answer(ex, 403, "client address not allowed")

    cpdef bint judge(self, str ip):
        """Whether ``ip`` may pass: in no ``deny`` network, and in an ``allow`` one when
        there is an ``allow`` list. An address that does not parse may not."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for network in self.deny:
            if address in network:
                return False
        if not self.allow:
            return True
        for network in self.allow:
            if address in network:
                return True
        return False

    def describe(self):
        parts = [Policy.describe(self)]
        if self.allow:
            parts.append("allow " + " ".join(str(n) for n in self.allow))
        if self.deny:
            parts.append("deny " + " ".join(str(n) for n in self.deny))
        return " ".join(parts)


def _check(settings):
    if not settings["allow"] and not settings["deny"]:
        return [(None, 'needs "allow" or "deny" (or both)')]
    return []


SPECS = (
    PolicySpec("ip", PRIORITY, {"allow": ("cidrs", ()), "deny": ("cidrs", ())},
               lambda owner, settings, context: IpFilter(owner, settings["allow"], settings["deny"]),
               check=_check, in_global=True),
)
