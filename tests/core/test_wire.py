"""Tests of fastgw._core.wire against plain Python written another way: header ids
(any case, every name, near misses), the head writer (against ``b"".join``), trace
ids (format, never zero, distinct, reseeded per process); and the response-head
shortcut against llhttp itself (httptools), on examples, generated and mutated heads.
Also the proxy's request ids, formatted in C the same way.

May import: fastgw._core, fastgw.proxy (request ids), httptools (the reference parser),
pytest, hypothesis, the standard library.
"""

from __future__ import annotations

import os
import re

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.wire import NAMES, HeadWriter, header_id, new_traceparent, scan_response, seed_trace_ids

# The names every module of the request path relies on, written out again here.
EXPECTED_NAMES = {
    b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"te",
    b"trailer", b"upgrade", b"proxy-connection", b"proxy-authorization", b"proxy-authenticate",
    b"expect", b"x-request-id", b"traceparent", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"x-real-ip", b"x-consumer-id", b"x-consumer-groups",
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
    st.tuples(st.just("text"), st.text(max_size=40)),
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
        elif op[0] == "hex":
            writer.write_hex(op[1])
            parts.append(b"%x" % op[1])
        else:  # str: as latin-1, refused beyond it (and nothing written)
            try:
                expected = op[1].encode("latin-1")
            except UnicodeEncodeError:
                with pytest.raises(UnicodeEncodeError):
                    writer.write_text(op[1])
                continue
            writer.write_text(op[1])
            parts.append(expected)
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


# -- the response-head shortcut against llhttp (httptools) ------------------------------------

# The drop mask of the upstream side: hop-by-hop fields, the framing, x-request-id.
DROP = {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"proxy-connection", b"proxy-authenticate", b"proxy-authorization", b"content-length",
        b"x-request-id"}
DROP_MASK = sum(1 << NAMES[name] for name in DROP)


class LLHTTP:
    """What httptools makes of a response: status, fields, keep-alive, or an error."""

    def __init__(self, data: bytes) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.complete = False
        self.error = None
        self.keep_alive = None
        parser = httptools.HttpResponseParser(self)
        self.parser = parser
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = exc

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


def check_against_llhttp(data: bytes) -> bool:
    """Whenever the shortcut reads a head, llhttp reads the same head; True if it read."""
    got = scan_response(data, DROP_MASK)
    if got is None:
        return False
    status, lines, length, head_end, keep_alive = got
    ref = LLHTTP(data[:head_end] + b"x" * length)
    assert ref.error is None, (data, ref.error)
    assert ref.complete and ref.status == status
    kept = [(n, v) for n, v in ref.fields if n.lower() not in DROP]
    assert lines == b"".join(n + b": " + v + b"\r\n" for n, v in kept)
    lengths = [v for n, v in ref.fields if n.lower() == b"content-length"]
    assert len(lengths) == 1 and int(lengths[0]) == length
    assert keep_alive == ref.keep_alive
    return True


def test_shortcut_reads_a_plain_response():
    data = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
            b"X-Request-Id: theirs\r\nX-Empty:\r\nX-Spaces:  a b  \r\n\r\nhello")
    assert scan_response(data, DROP_MASK) == (
        200, b"Server: nginx\r\nX-Empty: \r\nX-Spaces: a b  \r\n", 5, len(data) - 5, True)
    assert check_against_llhttp(data)


def test_shortcut_drops_the_named_fields_in_any_case():
    data = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Powered-By: php\r\nContent-Length: 2\r\n"
            b"SERVER: again\r\nX-Kept: 1\r\nServe: r\r\n\r\nok")
    got = scan_response(data, DROP_MASK, (b"server", b"x-powered-by"))
    assert got[:3] == (200, b"X-Kept: 1\r\nServe: r\r\n", 2)
    assert scan_response(data, DROP_MASK, ())[1] == scan_response(data, DROP_MASK)[1]
    # (named ids stay the mask's business: a name that has an id is not looked up)
    assert scan_response(data, 0, (b"content-length",))[1].count(b"Content-Length") == 1


@pytest.mark.parametrize("data, keep_alive", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n", True),
    (b"HTTP/1.1 503 \r\nContent-Length: 2\r\nconnection: keep-alive, close\r\n\r\nno", False),
])
def test_shortcut_keep_alive(data, keep_alive):
    assert scan_response(data, DROP_MASK)[4] is keep_alive
    assert check_against_llhttp(data)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",   # chunked: llhttp's
    b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n",                              # close-delimited
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close, x-secret\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n",                          # cut head
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\nX: y\r\n\r\nx",               # bare LF
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n folded\r\n\r\nx",          # obs-fold
    b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx",                    # space before colon
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 1\r\n\r\nx",        # NUL
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 1\r\n\r\nx",          # bare CR
    b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n",
    b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n: empty name\r\nContent-Length: 0\r\n\r\n",
])
def test_shortcut_declines_what_it_does_not_read(data):
    assert scan_response(data, DROP_MASK) is None


_FIELD_NAMES = st.sampled_from([
    b"Server", b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection",
    b"Keep-Alive", b"X-Request-Id", b"Set-Cookie", b"X-A", b"Upgrade", b"Trailer", b"TE", b""])
_FIELD_VALUES = st.one_of(
    st.sampled_from([b"0", b"12", b"007", b"close", b"keep-alive", b"Keep-Alive, Close",
                     b"chunked", b" padded ", b"", b"a\tb", b"\xff\xfe", b"1,2"]),
    st.binary(max_size=12))


@settings(max_examples=1500, deadline=None)
@given(
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/1.1 "]),
    status=st.sampled_from([b"200", b"201", b"404", b"503", b"204", b"304", b"101", b"999", b"20x"]),
    reason=st.sampled_from([b" OK", b" ", b"", b" Not\tFound", b" \x80caf\xe9"]),
    fields=st.lists(st.tuples(_FIELD_NAMES, st.sampled_from([b": ", b":", b" : ", b":\t"]),
                              _FIELD_VALUES, st.sampled_from([b"\r\n", b"\n", b"\r\n "])),
                    max_size=8),
    body=st.binary(max_size=20),
)
def test_shortcut_agrees_with_llhttp_on_generated_heads(version, status, reason, fields, body):
    head = version + b" " + status + reason + b"\r\n"
    head += b"".join(n + sep + v + end for n, sep, v, end in fields)
    check_against_llhttp(head + b"\r\n" + body)


PLAIN = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\n"
         b"Connection: keep-alive\r\nX-A: b\r\n\r\nabc")
EDIT_BYTES = [0, 9, 10, 13, 32, 44, 48, 58, 65, 97, 127, 255]
EDITS = ["replace", "insert", "delete"]


def mutated(edits: list[tuple[int, str, int]]) -> bytes:
    """PLAIN with each (position, edit, byte) applied in turn; positions wrap around."""
    base = bytearray(PLAIN)
    for at, how, byte in edits:
        at %= len(base)
        if how == "replace":
            base[at] = byte
        elif how == "insert":
            base.insert(at, byte)
        else:
            del base[at]
    return bytes(base)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(PLAIN)), st.sampled_from(EDITS), st.sampled_from(EDIT_BYTES)),
                min_size=1, max_size=4))
def test_shortcut_agrees_with_llhttp_on_mutated_heads(edits):
    check_against_llhttp(mutated(edits))


def test_the_comparisons_above_see_both_outcomes():
    """The property tests compare only when the shortcut reads; make sure that it reads
    often, and declines often, on heads drawn the same way (seeded, so reproducible)."""
    import random

    rng = random.Random(7)
    read = declined = 0
    for _ in range(3000):
        edits = [(rng.randrange(len(PLAIN)), rng.choice(EDITS), rng.choice(EDIT_BYTES))
                 for _ in range(rng.randint(1, 2))]
        if check_against_llhttp(mutated(edits)):
            read += 1
        else:
            declined += 1
    assert read > 500 and declined > 500, (read, declined)


def test_request_ids_count_in_hex_after_a_process_prefix():
    """The proxy's request ids (formatted in C): prefix, "-", the counter in hex."""
    from fastgw.proxy import RequestIds

    ids = RequestIds()
    assert re.fullmatch(r"[0-9a-f]{12}", ids.prefix)
    assert [ids.next() for _ in range(17)][-2:] == [f"{ids.prefix}-10", f"{ids.prefix}-11"]
    ids.counter = 2**64 - 2
    assert ids.next() == f"{ids.prefix}-{2**64 - 1:x}"
