"""Typed models: msgspec round trips, raw bytes kept by Content, the empty descriptor, ChainIDs."""

from __future__ import annotations

import base64
import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocikit.spec import mediatype as mt
from ocikit.spec.chain import chain_id, chain_ids
from ocikit.spec.digest import DigestError, digest_of
from ocikit.spec.models import (
    EMPTY_DESCRIPTOR,
    EMPTY_JSON,
    ContainerConfig,
    Content,
    Descriptor,
    History,
    ImageConfig,
    ImageIndex,
    ImageLayout,
    ImageManifest,
    RootFS,
    decode,
    encode,
)
from ocikit.spec.platform import Platform
from ocikit.spec.validate import validate

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
_media_types = st.sampled_from([mt.OCI_MANIFEST, mt.OCI_LAYER_GZIP, mt.OCI_CONFIG, "application/x.test+json"])
_digests = st.binary(max_size=16).map(digest_of)
_annotations = st.none() | st.dictionaries(_text, _text, max_size=3)
_platforms = st.builds(
    Platform,
    architecture=st.sampled_from(["amd64", "arm64", "arm"]),
    os=st.sampled_from(["linux", "windows"]),
    os_version=st.none() | _text,
    os_features=st.none() | st.lists(_text, max_size=2),
    variant=st.none() | st.sampled_from(["v7", "v8"]),
)
_descriptors = st.builds(
    Descriptor,
    media_type=_media_types,
    digest=_digests,
    size=st.integers(min_value=0, max_value=2**63 - 1),
    urls=st.none() | st.lists(st.just("https://example.com/blob"), max_size=2),
    annotations=_annotations,
    data=st.none() | st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode()),
    platform=st.none() | _platforms,
    artifact_type=st.none() | _media_types,
)
_manifests = st.builds(
    ImageManifest,
    schema_version=st.just(2),
    media_type=st.none() | st.just(mt.OCI_MANIFEST),
    artifact_type=st.none() | _media_types,
    config=_descriptors,
    layers=st.lists(_descriptors, max_size=3),
    subject=st.none() | _descriptors,
    annotations=_annotations,
)
_indexes = st.builds(
    ImageIndex,
    schema_version=st.just(2),
    media_type=st.none() | st.just(mt.OCI_INDEX),
    artifact_type=st.none() | _media_types,
    manifests=st.lists(_descriptors, max_size=3),
    subject=st.none() | _descriptors,
    annotations=_annotations,
)
_string_lists = st.none() | st.lists(_text, max_size=3)
_configs = st.builds(
    ImageConfig,
    architecture=st.sampled_from(["amd64", "arm64"]),
    os=st.just("linux"),
    created=st.none() | st.just("2024-05-01T10:00:00Z"),
    author=st.none() | _text,
    os_version=st.none() | _text,
    os_features=_string_lists,
    variant=st.none() | st.just("v8"),
    config=st.none()
    | st.builds(
        ContainerConfig,
        user=st.none() | _text,
        exposed_ports=st.none() | st.just({"80/tcp": {}}),
        env=st.none() | st.lists(st.just("A=b"), max_size=2),
        entrypoint=_string_lists,
        cmd=_string_lists,
        volumes=st.none() | st.just({"/data": {}}),
        working_dir=st.none() | _text,
        labels=_annotations,
        stop_signal=st.none() | st.just("SIGTERM"),
        args_escaped=st.none() | st.booleans(),
    ),
    rootfs=st.builds(RootFS, type=st.just("layers"), diff_ids=st.lists(_digests, max_size=3)),
    history=st.none()
    | st.lists(
        st.builds(History, created_by=st.none() | _text, empty_layer=st.none() | st.booleans()), max_size=2
    ),
)


@given(_descriptors)
def test_descriptor_round_trip(value: Descriptor) -> None:
    assert decode(encode(value), Descriptor) == value


@given(_manifests)
def test_manifest_round_trip(value: ImageManifest) -> None:
    raw = encode(value)
    assert decode(raw, ImageManifest) == value
    assert b'"schemaVersion":2' in raw


@given(_indexes)
def test_index_round_trip(value: ImageIndex) -> None:
    assert decode(encode(value), ImageIndex) == value


@given(_configs)
def test_config_round_trip(value: ImageConfig) -> None:
    raw = encode(value)
    assert decode(raw, ImageConfig) == value
    assert validate(msgspec.json.decode(raw), "config") == []


def test_wire_names_are_those_of_the_spec() -> None:
    config = ImageConfig(
        architecture="arm64",
        os="linux",
        os_version="1",
        config=ContainerConfig(working_dir="/w", exposed_ports={"80/tcp": {}}),
        rootfs=RootFS(type="layers", diff_ids=[]),
    )
    node = msgspec.json.decode(encode(config))
    assert node["os.version"] == "1"
    assert node["config"] == {"WorkingDir": "/w", "ExposedPorts": {"80/tcp": {}}}
    descriptor = Descriptor(media_type=mt.OCI_MANIFEST, digest=digest_of(b""), size=0, artifact_type="a/b")
    assert set(msgspec.json.decode(encode(descriptor))) == {"mediaType", "digest", "size", "artifactType"}


def test_unknown_fields_are_ignored_when_decoding() -> None:
    raw = b'{"mediaType":"a/b","digest":"sha256:x","size":1,"future":true}'
    assert decode(raw, Descriptor).size == 1


def test_decoding_errors_name_the_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.layers\[0\]\.size"):
        decode(
            b'{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"d","size":1},'
            b'"layers":[{"mediaType":"a/b","digest":"d","size":"1"}]}',
            ImageManifest,
        )


def test_image_config_platform() -> None:
    config = ImageConfig(
        architecture="arm", os="linux", variant="v7", rootfs=RootFS(type="layers", diff_ids=[])
    )
    assert str(config.platform) == "linux/arm/v7"


def test_layout_header_model() -> None:
    assert decode(b'{"imageLayoutVersion":"1.0.0"}', ImageLayout).image_layout_version == "1.0.0"


# ---------------------------------------------------------------- Content keeps raw bytes


def test_content_keeps_raw_bytes_and_digests_them() -> None:
    raw = b'{\n  "schemaVersion": 2,\n  "config": ' + encode(EMPTY_DESCRIPTOR) + b',\n  "layers": []\n}\n'
    content = Content.parse(raw, ImageManifest, mt.OCI_MANIFEST)
    assert content.raw is raw
    assert content.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert content.digest != digest_of(encode(content.value))  # re-encoding would name other content
    descriptor = content.descriptor(annotations={"k": "v"})
    assert (descriptor.media_type, descriptor.digest, descriptor.size) == (
        mt.OCI_MANIFEST,
        content.digest,
        len(raw),
    )
    assert descriptor.annotations == {"k": "v"}


def test_descriptor_of_content() -> None:
    descriptor = Descriptor.of(mt.OCI_LAYER, b"layer")
    assert descriptor.digest == digest_of(b"layer")
    assert descriptor.size == 5


def test_embedded_data() -> None:
    assert Descriptor.of("text/plain", b"x", data="eA==").embedded_data() == b"x"
    assert Descriptor.of("text/plain", b"x").embedded_data() is None


def test_empty_descriptor_is_consistent() -> None:
    assert EMPTY_JSON == b"{}"
    assert EMPTY_DESCRIPTOR.media_type == mt.OCI_EMPTY
    assert EMPTY_DESCRIPTOR.size == len(EMPTY_JSON)
    assert EMPTY_DESCRIPTOR.digest == digest_of(EMPTY_JSON)
    assert EMPTY_DESCRIPTOR.embedded_data() == EMPTY_JSON
    assert validate(msgspec.json.decode(encode(EMPTY_DESCRIPTOR)), "descriptor") == []


# ---------------------------------------------------------------- ChainIDs


def test_chain_ids_against_hand_computed_values() -> None:
    diff_ids = [digest_of(b"layer0"), digest_of(b"layer1"), digest_of(b"layer2")]
    second = "sha256:" + hashlib.sha256(f"{diff_ids[0]} {diff_ids[1]}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {diff_ids[2]}".encode()).hexdigest()
    assert chain_ids(diff_ids) == [diff_ids[0], second, third]
    assert chain_id(diff_ids) == third


def test_chain_id_of_a_known_stack() -> None:
    # Computed by hand: sha256("sha256:aaa…a sha256:bbb…b").
    first, second = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    expected = "sha256:" + hashlib.sha256(f"{first} {second}".encode()).hexdigest()
    assert chain_id([first, second]) == expected
    assert chain_id([first]) == first


def test_chain_id_needs_layers_and_valid_digests() -> None:
    assert chain_ids([]) == []
    with pytest.raises(ValueError, match="empty"):
        chain_id([])
    with pytest.raises(DigestError):
        chain_ids(["sha256:nope"])


def test_documents_holding_digest_objects_encode_with_any_encoder() -> None:
    descriptor = Descriptor.of(mt.OCI_LAYER, b"layer")
    assert msgspec.json.decode(msgspec.json.encode(descriptor))["digest"] == digest_of(b"layer")
    assert msgspec.json.decode(msgspec.json.encode(EMPTY_DESCRIPTOR))["digest"] == EMPTY_DESCRIPTOR.digest
    diff_ids: list[str] = []
    diff_ids.extend(chain_ids([digest_of(b"a")]))  # Digest objects, not plain str
    rootfs = RootFS(type="layers", diff_ids=diff_ids)
    assert msgspec.json.decode(encode(rootfs)) == {"type": "layers", "diff_ids": [digest_of(b"a")]}
