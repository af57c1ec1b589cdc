"""``unix:`` and ``seqpacket:`` bus URLs: every form, the normal form, every error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncbus._core.url import (
    DEFAULT_JOIN_TIMEOUT,
    DEFAULT_PEER_QUEUE,
    DEFAULT_STALL_TIMEOUT,
    MAX_DIRECTORY,
    UNIXAddress,
    parse_url,
)
from asyncbus._exceptions import InvalidURLError

SCHEMES = pytest.mark.parametrize("scheme", ["unix", "seqpacket"])


def unix(url: str, overrides: dict[str, str | int] | None = None) -> UNIXAddress:
    address = parse_url(url, overrides)
    assert isinstance(address, UNIXAddress)
    return address


class TestForms:
    @SCHEMES
    def test_per_user_name(self, scheme: str) -> None:
        assert unix(f"{scheme}:sensors") == UNIXAddress(scheme=scheme, name="sensors")

    @SCHEMES
    def test_abstract_name(self, scheme: str) -> None:
        assert unix(f"{scheme}:@sensors") == UNIXAddress(
            scheme=scheme, name="sensors", abstract=True
        )

    @SCHEMES
    def test_directory(self, scheme: str) -> None:
        assert unix(f"{scheme}:///run/user/1000/bus") == UNIXAddress(
            scheme=scheme, directory="/run/user/1000/bus"
        )

    def test_defaults(self) -> None:
        address = unix("unix:x")
        assert address.directory is None
        assert not address.abstract
        assert address.allow_uids == address.allow_gids == frozenset()
        assert address.peer_queue == DEFAULT_PEER_QUEUE == 1024
        assert address.stall_timeout == DEFAULT_STALL_TIMEOUT == 5.0
        assert address.join_timeout == DEFAULT_JOIN_TIMEOUT == 1.0

    @pytest.mark.parametrize(
        ("url", "directory"),
        [
            ("unix:/tmp/bus", "/tmp/bus"),
            ("unix:///tmp/bus/", "/tmp/bus"),
            ("unix:////tmp//bus", "/tmp/bus"),
            ("unix:///tmp/a b", "/tmp/a b"),
            ("unix:///tmp/%41", "/tmp/%41"),
            ("unix:///tmp/é", "/tmp/é"),
            ("unix:///a", "/a"),
        ],
        ids=[
            "one-slash",
            "trailing-slash",
            "doubled-slashes",
            "space",
            "percent-taken-literally",
            "non-ascii",
            "one-component",
        ],
    )
    def test_directory_spellings(self, url: str, directory: str) -> None:
        assert unix(url).directory == directory

    @pytest.mark.parametrize(
        "name",
        ["a", "A-Z_0.9", "x" * 64, "my.bus", "-", "_"],
        ids=["one-char", "all-classes", "64-chars", "dot-inside", "dash", "underscore"],
    )
    def test_valid_names(self, name: str) -> None:
        assert unix(f"unix:{name}").name == name
        assert unix(f"unix:@{name}").name == name

    def test_empty_query(self) -> None:
        assert unix("unix:x?") == unix("unix:x")


class TestOptions:
    def test_every_option(self) -> None:
        address = unix(
            "seqpacket:@b?allow_uids=65534,1000&allow_gids=100&peer_queue=8"
            "&stall_timeout=0.5&join_timeout=0"
        )
        assert address.allow_uids == frozenset({65534, 1000})
        assert address.allow_gids == frozenset({100})
        assert address.peer_queue == 8
        assert address.stall_timeout == 0.5
        assert address.join_timeout == 0.0

    def test_ids_with_spaces(self) -> None:
        assert unix("unix:x?allow_uids= 1 , 2 ").allow_uids == frozenset({1, 2})

    def test_empty_ids_mean_none(self) -> None:
        assert unix("unix:x?allow_uids=&allow_gids=").allow_uids == frozenset()

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("allow_uids", "0"),
            ("allow_uids", str(2**32 - 2)),
            ("peer_queue", "1"),
            ("peer_queue", "65536"),
            ("stall_timeout", "0"),
            ("stall_timeout", "86400"),
            ("join_timeout", "0.001"),
        ],
        ids=["uid-0", "uid-max", "queue-1", "queue-max", "stall-0", "stall-max", "join-1ms"],
    )
    def test_bounds_are_accepted(self, option: str, value: str) -> None:
        unix(f"unix:x?{option}={value}")

    def test_overrides_replace_the_query(self) -> None:
        address = unix(
            "unix:@x?peer_queue=5&allow_uids=1",
            {"peer_queue": 7, "allow_uids": 65534, "join_timeout": "0.25"},
        )
        assert address.peer_queue == 7
        assert address.allow_uids == frozenset({65534})
        assert address.join_timeout == 0.25

    def test_overrides_are_checked(self) -> None:
        with pytest.raises(InvalidURLError, match="peer_queue=0 is out of range"):
            unix("unix:x", {"peer_queue": 0})

        with pytest.raises(InvalidURLError, match="unknown unix option"):
            unix("unix:x", {"ttl": 1})


# --- the normal form ---------------------------------------------------------------------

names = st.text(st.sampled_from("abcxyzABC019_.-"), min_size=1, max_size=64).filter(
    lambda name: name not in (".", "..")
)
components = st.text(
    st.characters(exclude_characters="/\0?#", exclude_categories=["Cs"]), min_size=1, max_size=8
).filter(lambda part: part not in (".", ".."))
directories = st.lists(components, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts))
ids = st.frozensets(st.integers(0, 2**32 - 2), max_size=4)
# Whole and half seconds: at most 6 significant digits (see test_round_trip_keeps_every_digit).
seconds = st.integers(0, 2 * 86_400).map(lambda halves: halves / 2)


@st.composite
def addresses(draw: st.DrawFn) -> UNIXAddress:
    scheme = draw(st.sampled_from(["unix", "seqpacket"]))
    form = draw(st.sampled_from(["name", "abstract", "directory"]))
    if form == "directory":
        directory = draw(directories.filter(lambda d: len(d.encode()) <= MAX_DIRECTORY))
        where: dict[str, object] = {"directory": directory}
    else:
        where = {"name": draw(names), "abstract": form == "abstract"}

    return UNIXAddress(
        scheme=scheme,
        allow_uids=draw(ids),
        allow_gids=draw(ids),
        peer_queue=draw(st.integers(1, 65536)),
        stall_timeout=draw(seconds),
        join_timeout=draw(seconds),
        segment_memory=draw(st.integers(64 << 10, 1 << 40)),
        segment_cache=draw(st.integers(0, 1 << 40)),
        **where,  # type: ignore[arg-type]
    )


class TestNormalForm:
    @pytest.mark.parametrize(
        ("url", "normal"),
        [
            ("unix:x", "unix:x"),
            ("unix:@x", "unix:@x"),
            ("unix:/tmp/b/", "unix:///tmp/b"),
            ("seqpacket:////tmp//b", "seqpacket:///tmp/b"),
            ("unix:x?peer_queue=1024&stall_timeout=5&join_timeout=1", "unix:x"),
            (
                "unix:x?segment_memory=1073741824&segment_cache=1073741824",
                "unix:x",
            ),
            (
                "unix:x?segment_cache=0&segment_memory=65536",
                "unix:x?segment_memory=65536&segment_cache=0",
            ),
            ("unix:x?allow_uids=3,1,2", "unix:x?allow_uids=1,2,3"),
            ("unix:x?allow_uids=1,1", "unix:x?allow_uids=1"),
            (
                "unix:@x?join_timeout=2&stall_timeout=0&peer_queue=9&allow_gids=5&allow_uids=4",
                "unix:@x?allow_uids=4&allow_gids=5&peer_queue=9&stall_timeout=0&join_timeout=2",
            ),
            ("unix:x?stall_timeout=0.25", "unix:x?stall_timeout=0.25"),
        ],
        ids=[
            "name",
            "abstract",
            "one-slash-directory",
            "messy-directory",
            "defaults-dropped",
            "segment-defaults-dropped",
            "segment-options",
            "ids-sorted",
            "ids-deduplicated",
            "options-in-order",
            "fraction",
        ],
    )
    def test_url(self, url: str, normal: str) -> None:
        assert unix(url).url() == normal

    @given(addresses())
    def test_round_trip(self, address: UNIXAddress) -> None:
        assert parse_url(address.url()) == address

    @given(addresses())
    def test_normal_form_is_a_fixed_point(self, address: UNIXAddress) -> None:
        url = address.url()
        assert unix(url).url() == url

    @pytest.mark.parametrize("option", ["stall_timeout", "join_timeout"])
    @pytest.mark.parametrize("value", ["1000.001", "0.1234567"], ids=["ms", "many-digits"])
    def test_round_trip_keeps_every_digit(self, option: str, value: str) -> None:
        address = unix(f"unix:x?{option}={value}")
        assert parse_url(address.url()) == address


# --- errors --------------------------------------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize(
        "url",
        [
            "unix:",
            "unix:@",
            "unix:" + "x" * 65,
            "unix:@" + "x" * 65,
            "unix:a b",
            "unix:a/b",
            "unix:@a/b",
            "unix:é",
            "unix:a:b",
            "unix:a\0",
            "unix:@@a",
        ],
        ids=[
            "empty",
            "abstract-empty",
            "65-chars",
            "abstract-65-chars",
            "space",
            "slash",
            "abstract-slash",
            "non-ascii",
            "colon",
            "nul",
            "double-at",
        ],
    )
    def test_bad_names(self, url: str) -> None:
        with pytest.raises(InvalidURLError, match=r"bad bus name .* use 1 to 64 of A-Z a-z 0-9"):
            unix(url)

    @pytest.mark.parametrize("name", [".", ".."], ids=["dot", "dot-dot"])
    def test_dot_names_are_refused(self, name: str) -> None:
        with pytest.raises(InvalidURLError, match="bad bus name"):
            unix(f"unix:{name}")

    @pytest.mark.parametrize(
        "url",
        ["unix://host/x", "unix://localhost/tmp/b", "seqpacket://h", "unix://"],
        ids=["host", "localhost", "seqpacket-host", "empty-authority-no-path"],
    )
    def test_host(self, url: str) -> None:
        scheme = url.partition(":")[0]
        with pytest.raises(InvalidURLError, match=f"names no host: write {scheme}:///absolute"):
            unix(url)

    @pytest.mark.parametrize(
        "url",
        ["unix:///", "unix:/", "unix:///tmp/../etc", "unix:///..", "unix:///tmp/a\0b"],
        ids=["root", "root-one-slash", "dot-dot-inside", "dot-dot-only", "nul"],
    )
    def test_bad_directories(self, url: str) -> None:
        with pytest.raises(InvalidURLError, match="bad bus directory"):
            unix(url)

    def test_longest_directory(self) -> None:
        directory = "/" + "d" * (MAX_DIRECTORY - 1)
        assert unix(f"unix://{directory}").directory == directory

    @pytest.mark.parametrize(
        "directory",
        ["/" + "d" * MAX_DIRECTORY, "/" + "é" * (MAX_DIRECTORY // 2 + 1), "/" + "d" * 200],
        ids=["one-byte-over", "two-byte-chars-over", "far-over"],
    )
    def test_too_long_directories(self, directory: str) -> None:
        with pytest.raises(InvalidURLError, match=r"too long for a unix socket path \(at most 83"):
            unix(f"unix://{directory}")

    def test_max_directory_leaves_room_for_a_member(self) -> None:
        # sun_path: 108 bytes with the NUL; "/" and a member name of up to 23 bytes.
        assert MAX_DIRECTORY + 1 + 23 + 1 == 108

    def test_directory_from_non_utf8_bytes(self) -> None:
        url = "unix:///tmp/" + b"\xff".decode("utf-8", "surrogateescape")
        try:
            address = unix(url)
        except InvalidURLError:
            return

        assert address.directory == "/tmp/\udcff"

    @pytest.mark.parametrize("url", ["unix:x#f", "unix:x?peer_queue=1#f", "unix:///tmp/a#b"])
    def test_fragment(self, url: str) -> None:
        with pytest.raises(InvalidURLError, match="has no fragment"):
            unix(url)

    @pytest.mark.parametrize(
        ("query", "unknown"),
        [
            ("ttl=0", "ttl"),
            ("interface=lo", "interface"),
            ("allow_uid=1", "allow_uid"),
            ("b=1&a=2", "a, b"),
            ("PEER_QUEUE=1", "PEER_QUEUE"),
        ],
        ids=["udpm-ttl", "udpm-interface", "typo", "two-sorted", "upper-case"],
    )
    def test_unknown_options(self, query: str, unknown: str) -> None:
        with pytest.raises(InvalidURLError) as caught:
            unix(f"unix:x?{query}")

        assert str(caught.value) == (
            f"unknown unix option(s) {unknown}; known: allow_uids, allow_gids, "
            "peer_queue, stall_timeout, join_timeout, segment_memory, segment_cache"
        )

    @pytest.mark.parametrize(
        ("query", "message"),
        [
            ("peer_queue=x", "option peer_queue='x' is not an integer"),
            ("peer_queue=", "option peer_queue='' is not an integer"),
            ("peer_queue", "option peer_queue='' is not an integer"),
            ("peer_queue=1.5", "option peer_queue='1.5' is not an integer"),
            ("peer_queue=0", "option peer_queue=0 is out of range 1..65536"),
            ("peer_queue=65537", "option peer_queue=65537 is out of range 1..65536"),
            ("peer_queue=-1", "option peer_queue=-1 is out of range 1..65536"),
            ("allow_uids=a", "option allow_uids='a' is not an integer"),
            ("allow_uids=1,,2", "option allow_uids='' is not an integer"),
            ("allow_uids=-1", "option allow_uids=-1 is out of range 0..4294967294"),
            ("allow_uids=4294967295", "option allow_uids=4294967295 is out of range"),
            ("allow_gids=root", "option allow_gids='root' is not an integer"),
            ("stall_timeout=soon", "option stall_timeout='soon' is not a number of seconds"),
            ("stall_timeout=", "option stall_timeout='' is not a number of seconds"),
            ("stall_timeout=-1", "option stall_timeout=-1 is out of range 0..86400 seconds"),
            ("stall_timeout=86401", "option stall_timeout=86401 is out of range"),
            ("stall_timeout=inf", "option stall_timeout=inf is out of range"),
            ("join_timeout=nan", "option join_timeout=nan is out of range"),
            ("segment_memory=1k", "option segment_memory='1k' is not an integer"),
            ("segment_memory=65535", "option segment_memory=65535 is out of range 65536.."),
            ("segment_cache=-1", "option segment_cache=-1 is out of range 0.."),
        ],
        ids=[
            "queue-word",
            "queue-empty",
            "queue-no-value",
            "queue-fraction",
            "queue-zero",
            "queue-over",
            "queue-negative",
            "uid-word",
            "uid-empty-item",
            "uid-negative",
            "uid-is-minus-one-u32",
            "gid-name",
            "stall-word",
            "stall-empty",
            "stall-negative",
            "stall-over-a-day",
            "stall-infinite",
            "join-nan",
            "segment-memory-unit",
            "segment-memory-under-one-segment",
            "segment-cache-negative",
        ],
    )
    def test_bad_values(self, query: str, message: str) -> None:
        with pytest.raises(InvalidURLError) as caught:
            unix(f"unix:x?{query}")

        assert str(caught.value).startswith(message)

    def test_errors_are_value_errors(self) -> None:
        with pytest.raises(ValueError, match="bad bus name"):
            unix("unix:")

    @pytest.mark.parametrize("url", ["UNIX:@x", "Seqpacket:@x"], ids=["upper", "mixed"])
    def test_scheme_case(self, url: str) -> None:
        try:
            address = unix(url)
        except InvalidURLError:
            return

        assert address == unix(url.lower())
