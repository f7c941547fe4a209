"""Platforms: normalisation of architecture and variant aliases, and matching."""

from __future__ import annotations

import pytest

from ocikit.spec.platform import Platform, PlatformError, host_platform, normalize, parse_platform


@pytest.mark.parametrize(
    ("offered", "wanted"),
    [
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm64", "linux/arm64/v8"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/amd64", "linux/x86_64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/i686", "linux/386"),
        ("Linux/AMD64", "linux/amd64"),
        ("macos/arm64", "darwin/arm64"),
    ],
)
def test_aliases_match(offered: str, wanted: str) -> None:
    assert parse_platform(offered).matches(parse_platform(wanted))


@pytest.mark.parametrize(
    ("offered", "wanted"),
    [
        ("linux/amd64", "linux/arm64"),
        ("linux/arm/v6", "linux/arm/v7"),
        ("linux/armhf", "linux/arm/v6"),
        ("windows/amd64", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64"),
    ],
)
def test_different_platforms_do_not_match(offered: str, wanted: str) -> None:
    assert not parse_platform(offered).matches(parse_platform(wanted))


def test_normalised_form() -> None:
    assert normalize(parse_platform("linux/aarch64")) == Platform(
        os="linux", architecture="arm64", variant="v8"
    )
    assert normalize(parse_platform("linux/x86_64")) == Platform(os="linux", architecture="amd64")
    assert normalize(parse_platform("linux/armhf")) == Platform(os="linux", architecture="arm", variant="v7")


def test_os_version_is_compared_only_when_wanted() -> None:
    server = Platform(os="windows", architecture="amd64", os_version="10.0.17763.1040")
    assert server.matches(Platform(os="windows", architecture="amd64"))
    assert server.matches(Platform(os="windows", architecture="amd64", os_version="10.0.17763.1040"))
    assert not server.matches(Platform(os="windows", architecture="amd64", os_version="10.0.14393.1066"))


def test_os_features_must_all_be_offered() -> None:
    offered = Platform(os="windows", architecture="amd64", os_features=["win32k", "x"])
    assert offered.matches(Platform(os="windows", architecture="amd64", os_features=["win32k"]))
    assert not offered.matches(Platform(os="windows", architecture="amd64", os_features=["other"]))


def test_str_is_the_platform_string() -> None:
    assert str(parse_platform("linux/arm/v7")) == "linux/arm/v7"
    assert str(parse_platform("linux/amd64")) == "linux/amd64"


@pytest.mark.parametrize("text", ["", "linux", "amd64", "linux/", "/amd64", "linux//v7", "linux/arm/v7/x"])
def test_parse_platform_errors(text: str) -> None:
    with pytest.raises(PlatformError, match="os/arch"):
        parse_platform(text)


def test_host_platform_is_normalised() -> None:
    host = host_platform()
    assert host == normalize(host)
    assert host.matches(host)
