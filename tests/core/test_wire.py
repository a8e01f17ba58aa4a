"""Tests of fastgw._core.wire against plain Python written another way: header ids
(any case, every name, near misses), the head writer (against ``b"".join``), and trace
ids (format, never zero, distinct, reseeded per process).

May import: fastgw._core, pytest, hypothesis, the standard library.
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.wire import NAMES, HeadWriter, header_id, new_traceparent, seed_trace_ids

# The names every module of the request path relies on, written out again here.
EXPECTED_NAMES = {
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"te",
    b"trailer", b"upgrade", b"proxy-connection", b"proxy-authorization", b"proxy-authenticate",
    b"expect", b"x-request-id", b"traceparent", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"x-real-ip",
}


def reference_id(name: bytes) -> int:
    return NAMES.get(name.lower(), 0)


def test_names_are_the_expected_ones_with_distinct_nonzero_ids():
    assert set(NAMES) == EXPECTED_NAMES
    assert len(set(NAMES.values())) == len(NAMES)
    assert 0 not in NAMES.values()
    assert max(NAMES.values()) < 32  # the request path keeps masks in 32 bits


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_every_name_in_any_case(name):
    ident = NAMES[name]
    assert header_id(name) == ident
    assert header_id(name.upper()) == ident
    assert header_id(name.title()) == ident


@pytest.mark.parametrize("name", [
    b"", b"h", b"hos", b"hostt", b"Host ", b" host", b"content-lengt", b"content_length",
    b"x-request-ids", b"te-", b"upgrades", b"x-forwarded-for-", b"proxy-authorizatio",
    b"proxy-authorizationx", b"a" * 100, b"\xc8ost", b"h\x00st",
])
def test_near_misses_are_other(name):
    assert header_id(name) == 0


@settings(max_examples=500)
@given(st.one_of(
    st.binary(max_size=24),
    st.sampled_from(sorted(EXPECTED_NAMES)).flatmap(
        lambda n: st.lists(st.booleans(), min_size=len(n), max_size=len(n)).map(
            lambda upper: bytes(c - 32 if u and 97 <= c <= 122 else c for c, u in zip(n, upper)))),
))
def test_header_id_agrees_with_a_dict_lookup(name):
    assert header_id(name) == reference_id(name)


@settings(max_examples=300)
@given(st.lists(st.one_of(
    st.tuples(st.just("raw"), st.binary(max_size=300)),
    st.tuples(st.just("field"), st.binary(min_size=1, max_size=40), st.binary(max_size=200)),
    st.tuples(st.just("decimal"), st.integers(min_value=-(2**62), max_value=2**62)),
    st.tuples(st.just("hex"), st.integers(min_value=0, max_value=2**62)),
), max_size=60))
def test_head_writer_agrees_with_join(ops):
    writer = HeadWriter(16)  # small, so that growing is exercised
    parts = []
    for op in ops:
        if op[0] == "raw":
            writer.write(op[1])
            parts.append(op[1])
        elif op[0] == "field":
            writer.write_field(op[1], op[2])
            parts += [op[1], b": ", op[2], b"\r\n"]
        elif op[0] == "decimal":
            writer.write_decimal(op[1])
            parts.append(b"%d" % op[1])
        else:
            writer.write_hex(op[1])
            parts.append(b"%x" % op[1])
    assert writer.finish() == b"".join(parts)
    assert writer.finish() == b""  # finish starts over
    writer.write(b"again")
    assert writer.finish() == b"again"


def test_head_writer_refuses_a_negative_hex():
    with pytest.raises(ValueError):
        HeadWriter().write_hex(-1)


TRACEPARENT = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-01\Z")


def test_traceparents_are_valid_and_distinct():
    ids = [new_traceparent() for _ in range(10_000)]
    assert all(TRACEPARENT.match(t) for t in ids), ids[:3]
    assert len(set(ids)) == len(ids)
    assert len({t[3:35] for t in ids}) == len(ids)


def test_the_seed_decides_the_sequence():
    seed = os.urandom(16)
    seed_trace_ids(seed)
    first = [new_traceparent() for _ in range(5)]
    seed_trace_ids(seed)
    assert [new_traceparent() for _ in range(5)] == first
    seed_trace_ids(os.urandom(16))
    assert new_traceparent() not in first
    seed_trace_ids(b"\0" * 16)  # the one state xorshift never leaves is avoided
    assert TRACEPARENT.match(new_traceparent())
    with pytest.raises(ValueError):
        seed_trace_ids(b"short")
    seed_trace_ids(os.urandom(16))


def test_forked_workers_get_their_own_trace_ids():
    """The proxy reseeds in every forked child: two children, two sequences."""
    import fastgw.proxy  # noqa: F401  (registers the reseed at fork)

    def child_ids() -> bytes:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, new_traceparent())
            os._exit(0)
        os.close(write)
        data = os.read(read, 100)
        os.close(read)
        os.waitpid(pid, 0)
        return data

    a, b = child_ids(), child_ids()
    assert TRACEPARENT.match(a) and TRACEPARENT.match(b)
    assert a != b
