"""Digests: the grammar of descriptor.md, streaming hashing and verification."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocikit.spec.digest import (
    Digest,
    Digester,
    DigestError,
    HashStateError,
    ResumableDigester,
    UnsupportedAlgorithm,
    VerificationError,
    digest_of,
    is_valid_digest,
    verify_bytes,
    verify_stream,
)

SHA256_HEX = hashlib.sha256(b"hello").hexdigest()
SHA512_HEX = hashlib.sha512(b"hello").hexdigest()


@pytest.mark.parametrize(
    "value",
    [
        f"sha256:{SHA256_HEX}",
        f"sha512:{SHA512_HEX}",
        f"blake3:{SHA256_HEX}",
        f"sha256+b64:{SHA256_HEX}",
        f"sha256.foo-bar:{SHA256_HEX}",
        f"sha256_x:{SHA256_HEX}",
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        "md5:=",
    ],
)
def test_valid_digests(value: str) -> None:
    assert is_valid_digest(value)
    assert Digest(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        SHA256_HEX,
        f":{SHA256_HEX}",
        "sha256:",
        "sha256",
        f"SHA256:{SHA256_HEX}",
        f"sha256:{SHA256_HEX.upper()}",
        f"sha512:{SHA512_HEX.upper()}",
        f"blake3:{SHA256_HEX.upper()}",
        f"sha256:{SHA256_HEX[:-1]}",
        f"sha256:{SHA256_HEX}0",
        f"sha512:{SHA256_HEX}",
        f"sha256:{'g' * 64}",
        f"sha256+foo+-b:{SHA256_HEX}",
        f"+sha256:{SHA256_HEX}",
        f"sha256+:{SHA256_HEX}",
        "foo:bar baz",
        "foo:bar/baz",
        "fo o:bar",
    ],
)
def test_invalid_digests(value: str) -> None:
    assert not is_valid_digest(value)
    with pytest.raises(DigestError):
        Digest(value)


def test_non_strings_are_not_digests() -> None:
    assert not is_valid_digest(None)
    assert not is_valid_digest(7)
    with pytest.raises(DigestError):
        Digest(7)  # type: ignore[arg-type]


def test_parts() -> None:
    digest = Digest(f"sha256:{SHA256_HEX}")
    assert (digest.algorithm, digest.encoded) == ("sha256", SHA256_HEX)
    assert digest.is_supported
    assert not Digest(f"blake3:{SHA256_HEX}").is_supported
    assert Digest.from_parts("sha256", SHA256_HEX) == digest


def test_digest_of_matches_hashlib() -> None:
    assert digest_of(b"hello") == f"sha256:{SHA256_HEX}"
    assert digest_of(b"hello", "sha512") == f"sha512:{SHA512_HEX}"
    assert digest_of([b"he", b"", b"llo"]) == f"sha256:{SHA256_HEX}"


def test_unsupported_and_malformed_algorithms_are_distinguished() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        Digester("blake3")
    with pytest.raises(DigestError) as caught:
        Digester("Not-An-Algorithm")
    assert not isinstance(caught.value, UnsupportedAlgorithm)


@given(st.lists(st.binary(max_size=300), max_size=20), st.sampled_from(["sha256", "sha512"]))
def test_streaming_equals_one_shot(chunks: list[bytes], algorithm: str) -> None:
    digester = Digester(algorithm)
    for chunk in chunks:
        digester.update(chunk)
    whole = b"".join(chunks)
    assert digester.digest() == digest_of(whole, algorithm)
    assert digester.size == len(whole)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_copy_forks_the_state(prefix: bytes, suffix: bytes) -> None:
    digester = Digester()
    digester.update(prefix)
    fork = digester.copy()
    fork.update(suffix)
    assert digester.digest() == digest_of(prefix)
    assert fork.digest() == digest_of(prefix + suffix)
    assert fork.size == len(prefix) + len(suffix)


@given(st.binary(max_size=500))
def test_computed_digests_are_valid(data: bytes) -> None:
    assert is_valid_digest(digest_of(data))
    assert is_valid_digest(digest_of(data, "sha512"))


_ALGORITHM_COMPONENT = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)


@given(
    st.lists(_ALGORITHM_COMPONENT, min_size=1, max_size=3),
    st.sampled_from("+._-"),
    st.from_regex(r"[a-zA-Z0-9=_-]{1,80}", fullmatch=True),
)
def test_well_formed_unregistered_algorithms_are_accepted(
    components: list[str], separator: str, encoded: str
) -> None:
    algorithm = separator.join(components)
    if algorithm in ("sha256", "sha512", "blake3"):
        return
    assert is_valid_digest(f"{algorithm}:{encoded}")


@given(st.text(max_size=40))
def test_validity_never_raises(value: str) -> None:
    assert is_valid_digest(value) in (True, False)


# ---------------------------------------------------------------- verification


def test_verify_bytes_accepts_matching_content() -> None:
    verify_bytes(b"hello", f"sha256:{SHA256_HEX}", 5)
    verify_bytes(b"hello", f"sha512:{SHA512_HEX}")


def test_verify_bytes_refuses_wrong_size_before_hashing() -> None:
    # The digest is right: only the size check can refuse this.
    with pytest.raises(VerificationError, match="size"):
        verify_bytes(b"hello", f"sha256:{SHA256_HEX}", 4)


def test_verify_bytes_refuses_wrong_digest() -> None:
    with pytest.raises(VerificationError, match="digest"):
        verify_bytes(b"hellO", f"sha256:{SHA256_HEX}", 5)


def test_verify_refuses_an_invalid_expected_digest() -> None:
    with pytest.raises(DigestError):
        verify_bytes(b"hello", "sha256:nothex")


class _CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_verify_stream_accepts_matching_content() -> None:
    assert verify_stream(io.BytesIO(b"hello"), f"sha256:{SHA256_HEX}", 5, chunk_size=2) == 5
    assert verify_stream(io.BytesIO(b"hello"), f"sha256:{SHA256_HEX}") == 5


def test_verify_stream_stops_reading_once_too_long() -> None:
    stream = _CountingStream(b"x" * 10_000)
    with pytest.raises(VerificationError, match="size"):
        verify_stream(stream, f"sha256:{SHA256_HEX}", 5, chunk_size=16)
    assert stream.bytes_read <= 32


def test_verify_stream_refuses_short_content() -> None:
    with pytest.raises(VerificationError, match="size"):
        verify_stream(io.BytesIO(b"hell"), f"sha256:{SHA256_HEX}", 5)


def test_verify_stream_refuses_wrong_digest() -> None:
    with pytest.raises(VerificationError, match="digest"):
        verify_stream(io.BytesIO(b"hellO"), f"sha256:{SHA256_HEX}", 5)


def test_verify_stream_cannot_check_an_unsupported_algorithm() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        verify_stream(io.BytesIO(b"hello"), f"blake3:{SHA256_HEX}", 5)


@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_verify_stream_agrees_with_verify_bytes(data: bytes, chunk_size: int) -> None:
    expected = digest_of(data)
    verify_bytes(data, expected, len(data))
    assert verify_stream(io.BytesIO(data), expected, len(data), chunk_size=chunk_size) == len(data)


# --- resumable digests ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_resumable_digester_matches_hashlib_across_exports(
    algorithm: str, data: bytes, cuts: list[int]
) -> None:
    digester = ResumableDigester(algorithm)
    start = 0
    for cut in sorted(cuts):
        digester.update(data[start:cut])
        digester = ResumableDigester.restore(digester.export())  # as if in another process
        start = max(start, cut)
    digester.update(data[start:])
    assert digester.size == len(data)
    assert digester.digest() == f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def test_resumable_digest_leaves_the_state_usable() -> None:
    digester = ResumableDigester()
    digester.update(b"hel")
    assert digester.digest() == digest_of(b"hel")
    digester.update(b"lo")
    assert digester.digest() == f"sha256:{SHA256_HEX}"


@pytest.mark.parametrize(
    "state",
    [
        b"",
        b"md5:" + bytes(112),
        b"sha256:" + bytes(10),
        # a buffered-byte count past the block would make OpenSSL write out of bounds
        ResumableDigester().export()[:-8] + (200).to_bytes(4, "little") + (32).to_bytes(4, "little"),
        # a count that disagrees with the total length hashed
        ResumableDigester().export()[:-8] + (3).to_bytes(4, "little") + (32).to_bytes(4, "little"),
    ],
)
def test_a_malformed_hash_state_is_refused(state: bytes) -> None:
    with pytest.raises(HashStateError):
        ResumableDigester.restore(state)


def test_resumable_digester_refuses_other_algorithms() -> None:
    with pytest.raises(UnsupportedAlgorithm):
        ResumableDigester("blake3")
