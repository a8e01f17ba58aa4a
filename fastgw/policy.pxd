# C-level declarations of fastgw/policy.pyx: the contract between the proxy and every
# policy, cimported by the proxy and by the policies.

from fastgw.exchange cimport Exchange, ResponseEdit

cpdef enum Outcome:  # (cpdef: the Python plugin adapter uses the names too)
    CONTINUE = 0    # the request goes on to the next policy
    ANSWERED = 1    # the policy answered (``Exchange.answer``): the proxy writes it
    WAIT = 2        # the policy has an async step: the proxy awaits ``wait(ex)``


cdef class Policy:
    cdef readonly str name              # its config key: "rate_limit", "ip", a plugin's name
    cdef readonly str owner             # "global" or the route's name
    cdef readonly int priority          # higher runs first
    cdef readonly bint on_request, on_response, on_log   # the phases it acts in
    cdef readonly tuple drops           # response fields it removes, lower-case (static)
    cdef readonly list adds             # response fields it adds, (name, value) (static)

    cpdef int request(self, Exchange ex) except -1
    cpdef list response_head(self, Exchange ex, int status, list fields)
    cpdef log(self, Exchange ex)


cdef class Chain(ResponseEdit):
    cdef readonly tuple policies        # every policy, in the order they run
    cdef readonly tuple request_phase, response_phase, log_phase
    cdef readonly bint on_exchange      # it acts on the head or at the end: the exchange carries it


cpdef int answer(Exchange ex, int status, str message, list fields=*) except -1
