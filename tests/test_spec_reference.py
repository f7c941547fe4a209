"""Image references: parsing, Docker-style normalisation and clear errors."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocikit.spec.reference import Reference, ReferenceError, is_valid_tag, parse_reference, referrers_tag

HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
DIGEST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", None, None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("library/busybox", "docker.io", "library/busybox", None, None),
        ("docker.io/busybox", "docker.io", "library/busybox", None, None),
        ("index.docker.io/busybox", "docker.io", "library/busybox", None, None),
        ("user/app", "docker.io", "user/app", None, None),
        ("ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", None),
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/app:dev", "localhost:5000", "app", "dev", None),
        ("registry.example.com:443/a/b/c", "registry.example.com:443", "a/b/c", None, None),
        ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None),
        ("[::1]/app", "[::1]", "app", None, None),
        (f"app@{DIGEST}", "docker.io", "library/app", None, DIGEST),
        (f"quay.io/a/b:tag@{DIGEST}", "quay.io", "a/b", "tag", DIGEST),
        ("my-registry:5000/a__b/c-d.e", "my-registry:5000", "a__b/c-d.e", None, None),
    ],
)
def test_parse_and_normalise(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Busybox", "lower case"),
        ("busybox:", "invalid tag"),
        ("busybox:-x", "invalid tag"),
        ("busybox:" + "t" * 129, "invalid tag"),
        ("busybox@sha256:abc", "sha256"),
        ("busybox@", "digest"),
        ("a//b", "invalid repository"),
        ("a/b_", "invalid repository"),
        ("a/-b", "invalid repository"),
        ("exa_mple.com/app", "invalid registry host"),
        ("[::1/app", "invalid registry host"),
        ("localhost:port/app", "invalid registry host"),
        ("example.com/" + "a" * 250, "longer than"),
    ],
)
def test_invalid_references_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ReferenceError, match=message):
        parse_reference(text)


def test_identifier_prefers_the_digest() -> None:
    assert parse_reference(f"a:b@{DIGEST}").identifier == DIGEST
    assert parse_reference("a:b").identifier == "b"
    assert parse_reference("a").identifier == "latest"


def test_familiar_form() -> None:
    assert parse_reference("docker.io/library/busybox:1").familiar() == "busybox:1"
    assert parse_reference("docker.io/user/app").familiar() == "user/app"
    assert parse_reference("ghcr.io/o/a").familiar() == "ghcr.io/o/a"


def test_a_custom_default_registry() -> None:
    ref = parse_reference("team/app", default_registry="registry.internal:5000")
    assert str(ref) == "registry.internal:5000/team/app"


_COMPONENT = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", fullmatch=True).filter(
    lambda s: len(s) < 30
)
_HOST = st.one_of(
    st.just("localhost"),
    st.from_regex(r"[a-z0-9]{1,10}\.[a-z]{2,5}", fullmatch=True),
    st.builds(lambda p: f"localhost:{p}", st.integers(1, 65535)),
    st.builds(lambda p: f"[::1]:{p}", st.integers(1, 65535)),
)
_TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
_DIGEST = st.from_regex(r"[a-f0-9]{64}", fullmatch=True).map(lambda h: f"sha256:{h}")


@given(
    _HOST,
    st.lists(_COMPONENT, min_size=1, max_size=3),
    st.none() | _TAG,
    st.none() | _DIGEST,
)
def test_round_trip_of_canonical_references(
    host: str, components: list[str], tag: str | None, digest: str | None
) -> None:
    text = f"{host}/{'/'.join(components)}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


@given(st.lists(_COMPONENT, min_size=1, max_size=3), st.none() | _TAG)
def test_normalisation_is_idempotent(components: list[str], tag: str | None) -> None:
    text = "/".join(components) + (f":{tag}" if tag else "")
    try:
        ref = parse_reference(text)
    except ReferenceError:
        return  # e.g. a first component that looks like a host name
    assert parse_reference(str(ref)) == ref
    assert isinstance(ref, Reference)


@given(st.text(max_size=60))
def test_parsing_arbitrary_text_only_raises_reference_errors(text: str) -> None:
    with contextlib.suppress(ReferenceError):
        parse_reference(text)


@pytest.mark.parametrize(
    ("digest", "tag"),
    [
        ("sha256:" + "a" * 64, "sha256-" + "a" * 64),
        ("sha512:" + "a" * 128, "sha512-" + "a" * 64),
        ("sha256+b64u:abc_DEF-12=", "sha256-b64u-abc_DEF-12-"),
        (  # the distribution-spec's own example
            "test+algorithm+using+algorithm+separators+and+lots+of+characters+to+excercise+overall"
            "+truncation:alsoSome=InTheEncodedSectionToShowHyphenReplacementAndLotsAndLotsOfCharacters"
            "ToExcerciseEncodedTruncation",
            "test-algorithm-using-algorithm-s-alsoSome-InTheEncodedSectionToShowHyphenReplacementAndLotsAndLot",
        ),
    ],
)
def test_referrers_tag_schema(digest: str, tag: str) -> None:
    assert referrers_tag(digest) == tag
    assert is_valid_tag(tag)


@given(
    st.from_regex(r"[a-z0-9]+([+._-][a-z0-9]+)*", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9=_-]+", fullmatch=True),
)
def test_every_referrers_tag_is_a_valid_tag(algorithm: str, encoded: str) -> None:
    assert is_valid_tag(referrers_tag(f"{algorithm}:{encoded}"))
