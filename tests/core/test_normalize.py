"""Tests of fastgw._core.router.normalize_path (RFC 3986 §5.2.4, docs/routing.md):
examples of every rule, every refusal, and property tests (idempotent, no dot
segment or "//" survives, the result starts with "/", agreement with a small
Python model written another way).

May import: fastgw._core, pytest, hypothesis, the standard library.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.router import normalize_path

# ---------------------------------------------------------------------------
# Examples


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("/users/42", "/users/42"),
        ("/a.b/c..d/.e/..f/...", "/a.b/c..d/.e/..f/..."),  # dots inside names are not dot segments
        # percent-decoding of unreserved characters only
        ("/%41%62%7e%2D%2e%5F%30", "/Ab~-._0"),
        ("/a%2a%3d%20%25", "/a%2A%3D%20%25"),  # others stay encoded, hex upper-cased
        ("/%c3%a9", "/%C3%A9"),
        ("/%25%34%31", "/%2541"),  # one decoding only: "%2541" is not decoded again
        # duplicate slashes
        ("//a///b//", "/a/b/"),
        ("//", "/"),
        ("///", "/"),
        # dot segments
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/../../..", "/"),
        ("/..", "/"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/.", "/"),
        ("/./", "/"),
        ("/a/.../b", "/a/.../b"),
        ("/admin/../public", "/public"),
        ("/public/..//admin", "/admin"),  # slashes merged before dots resolve
        # dots that only appear after decoding
        ("/a/%2e%2E/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("/a/%2E/b", "/a/b"),
        ("/x/%2e%2e", "/"),
        ("/info/%2e%2e/private", "/private"),
        ("/.well-known/x", "/.well-known/x"),
    ],
)
def test_normal_forms(raw, normal):
    assert normalize_path(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a/b",
        "*",
        "http://h/a",
        "/a%2Fb", "/a%2fb",      # encoded slash
        "/a%5Cb", "/a%5cb",      # encoded backslash
        "/a%00", "/a%23b", "/a%3Fb", "/a%3f", "/a%3Bb", "/a%3b",
        "/a%G1", "/a%4", "/a%", "/a%%41", "/a%4g", "/%zz",  # bad escapes
        "/a\\b", "/a#frag", "/a;jsessionid=1", "/a;",
        "/a b", "/a\tb", "/a\x00", "/a\x1f", "/a\x7f", "/a\r\n",
        "/é", "/a\x80", "/\u2028", "/\U0001F600",
    ],
)
def test_refused(raw):
    assert normalize_path(raw) is None


def test_refusals_that_only_the_slow_path_sees_are_still_refusals():
    # A "%" sends the path down the decoding path; the raw checks must still hold.
    assert normalize_path("/%41;") is None
    assert normalize_path("//a\\") is None


def test_fast_path_returns_the_same_object():
    raw = "/api/v1/users/42/" + "x" * 10
    assert normalize_path(raw) is raw


def test_fast_path_is_a_single_scan_of_long_paths():
    raw = "/" + "a/" * 10000
    assert normalize_path(raw) is raw
    assert normalize_path(raw + "%41") == raw + "A"


def test_none_is_a_type_error():
    with pytest.raises(TypeError):
        normalize_path(None)


# ---------------------------------------------------------------------------
# Property tests

UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
REFUSED_ESCAPES = {0x2F, 0x5C, 0x00, 0x23, 0x3F, 0x3B}


def model(raw):
    """normalize_path written another way: regex substitution, then a list of segments."""
    if not raw.startswith("/") or not raw.isascii():
        return None
    if re.search(r"[\x00-\x20\x7f\\#;]", raw):
        return None
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        return None
    if any(int(h, 16) in REFUSED_ESCAPES for h in re.findall(r"%([0-9A-Fa-f]{2})", raw)):
        return None

    def decode(m):
        ch = chr(int(m.group(1), 16))
        return ch if ch in UNRESERVED else "%" + m.group(1).upper()

    decoded = re.sub(r"%([0-9A-Fa-f]{2})", decode, raw)
    parts = decoded.split("/")[1:]
    out = []
    for k, seg in enumerate(parts):
        if seg == "..":
            if out:
                out.pop()
        elif seg not in ("", "."):
            out.append(seg)
    ends_dir = parts[-1] in ("", ".", "..")
    return "/" + "/".join(out) + ("/" if ends_dir and out else "")


# Pieces that normalise, and pieces that refuse the path. A raw path is mostly the
# first kind (else almost every draw would just be refused), with now and then one
# of the second, or anything at all.
good = st.sampled_from(["/", "/", "/", ".", "..", "a", "B", "~", "%2e", "%2E", "%41", "%7e", "%2a", "%3d", "%20",
                        "%c3", "%25", "-", "_", "{", "!"])
bad = st.sampled_from(["%2f", "%2F", "%5c", "%3f", "%3b", "%23", "%00", "%", "%g", "%4", ";", "#", "\\", " ", "\x7f",
                       "é", "\u2028"])


@st.composite
def mixed(draw):
    parts = draw(st.lists(good, max_size=12))
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), draw(bad))
    return "/" + "".join(parts)


raw_paths = st.one_of(
    mixed(),
    st.lists(good, max_size=6).map("".join),
    st.text(max_size=20).map(lambda t: "/" + t),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=20),
)


@settings(max_examples=1500, deadline=None)
@given(raw_paths)
def test_properties(raw):
    normal = normalize_path(raw)
    assert normal == model(raw)
    if normal is None:
        return
    assert normal.startswith("/")
    assert "//" not in normal
    segments = normal[1:].split("/")
    assert "." not in segments and ".." not in segments
    assert re.search(r"%(?![0-9A-F]{2})", normal) is None  # every escape upper-case and whole
    assert normalize_path(normal) == normal  # idempotent
