"""Front ends: each turns a wire protocol into ``Exchange``s for the proxy and writes the
answers back. May import: fastgw.proxy, fastgw.exchange, fastgw.errors, fastgw._core."""
