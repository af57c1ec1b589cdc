"""`lcm.Decoder` (the cached hot-path decoder) gives exactly what `lcm.decode` gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbus._core import lcm
from asyncbus._exceptions import RemoteProtocolError

channels = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=20
).filter(lambda name: len(name.encode()) <= lcm.MAX_CHANNEL_BYTES)


def _outcome(decode: object, datagram: bytes) -> object:
    try:
        frame = decode(datagram)  # type: ignore[operator]
    except RemoteProtocolError:
        return "error"

    return (type(frame).__name__, frame.seq, frame.channel, frame.data)


@settings(deadline=None, max_examples=300, derandomize=True)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.builds(
                lambda name, seq, data, cut: lcm.encode(lcm.encode_channel(name), seq, data)[0][
                    :cut
                ],
                channels,
                st.integers(0, 2**32 - 1),
                st.binary(max_size=40),
                st.integers(0, 120),
            ),
        ),
        max_size=30,
    )
)
def test_same_results_as_decode(datagrams: list[bytes]) -> None:
    decoder = lcm.Decoder()
    for datagram in [*datagrams, *datagrams]:  # the second pass hits the cache
        assert _outcome(decoder.decode, datagram) == _outcome(lcm.decode, datagram)


@settings(deadline=None, max_examples=300, derandomize=True)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.builds(
                lambda name, seq, data, cut: lcm.encode(lcm.encode_channel(name), seq, data)[0][
                    :cut
                ],
                st.sampled_from(["a", "ab", "a" * 63, "?", "é"]),
                st.integers(0, 2**32 - 1),
                st.binary(max_size=40),
                st.integers(0, 120),
            ),
        ),
        max_size=30,
    )
)
def test_decode_short_agrees_with_decode(datagrams: list[bytes]) -> None:
    decoder = lcm.Decoder()
    for second_pass in (False, True):  # the second pass knows every channel
        for datagram in datagrams:
            expected = _outcome(lcm.decode, datagram)
            short = decoder.decode_short(datagram)
            if short is not None:
                assert ("CompleteMessage", short[1], short[0], short[2]) == expected
                continue

            assert not (second_pass and datagram[:4] == b"LC02" and expected != "error")
            if expected != "error":
                decoder.decode(datagram)  # learns the channel, as receive_lcm's fallback does


def test_cache_is_bounded() -> None:
    decoder = lcm.Decoder()
    for number in range(3000):
        datagram = lcm.encode(lcm.encode_channel(f"c{number}"), number, b"x")[0]
        assert decoder.decode(datagram).channel == f"c{number}"

    assert len(decoder._channels) <= 1024


@pytest.mark.parametrize(
    "datagram",
    [b"LC02\0\0\0\1" + b"\xff\xfe\0x", b"LC02\0\0\0\1\0x", b"LC02\0\0\0\1" + b"a" * 64 + b"\0"],
    ids=["bad-utf8", "empty-channel", "channel-too-long"],
)
def test_bad_channels_are_errors_even_after_caching(datagram: bytes) -> None:
    decoder = lcm.Decoder()
    decoder.decode(lcm.encode(lcm.encode_channel("a" * 63), 0, b"")[0])
    with pytest.raises(RemoteProtocolError):
        decoder.decode(datagram)
