"""The built-in policies of the route chain, one module each, every one a
``fastgw.policy.Policy``: ``limits`` (rate_limit, max_concurrent).

May import: fastgw.policy, fastgw.exchange, fastgw.errors, fastgw._core.
"""
