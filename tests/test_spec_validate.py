"""Validation rules of the image-spec, one test (or one parametrised case) per rule.

Cases are written from the prose of descriptor.md, manifest.md, image-index.md, config.md and
image-layout.md, plus the vectors of the upstream schema test-suite that our verdict must
agree with.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ocikit.spec import mediatype as mt
from ocikit.spec.validate import (
    ValidationFailed,
    check,
    infer_type,
    validate,
    validate_config,
    validate_descriptor,
    validate_document,
    validate_index,
    validate_layout_header,
    validate_manifest,
)

HEX = "5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"
DIGEST = f"sha256:{HEX}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def descriptor(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"mediaType": mt.OCI_MANIFEST, "size": 7682, "digest": DIGEST}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _MISSING}


_MISSING: Any = object()


def paths(violations: list[Any]) -> list[str]:
    return [v.path for v in violations]


def manifest(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "size": 1470, "digest": DIGEST},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "size": 148, "digest": DIGEST}],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _MISSING}


def index(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "size": 7143,
                "digest": DIGEST,
                "platform": {"architecture": "ppc64le", "os": "linux"},
            }
        ],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _MISSING}


def config(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [EMPTY_DIGEST]},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _MISSING}


def with_container_config(**fields: Any) -> dict[str, Any]:
    return config(config=fields)


# ---------------------------------------------------------------- descriptor.md

DESCRIPTOR_FAILURES = {
    "mediaType missing": descriptor(mediaType=_MISSING),
    "mediaType without subtype": descriptor(mediaType="application"),
    "mediaType type starts with a dot": descriptor(mediaType=".foo/bar"),
    "mediaType subtype starts with a dot": descriptor(mediaType="foo/.bar"),
    "mediaType type of 128 characters": descriptor(mediaType="a" * 128 + "/bar"),
    "mediaType subtype of 128 characters": descriptor(mediaType="foo/" + "b" * 128),
    "mediaType not a string": descriptor(mediaType=7),
    "size missing": descriptor(size=_MISSING),
    "size a string": descriptor(size="7682"),
    "size negative": descriptor(size=-1),
    "size a fraction": descriptor(size=1.5),
    "size beyond int64": descriptor(size=2**63),
    "digest missing": descriptor(digest=_MISSING),
    "digest without algorithm": descriptor(digest=f":{HEX}"),
    "digest without encoded part": descriptor(digest="sha256"),
    "digest with upper-case algorithm": descriptor(digest=f"SHA256:{HEX}"),
    "sha256 digest in upper-case hex": descriptor(digest=f"sha256:{HEX.upper()}"),
    "digest with adjacent separators": descriptor(digest=f"sha256+foo+-b:{HEX}"),
    "sha256 digest too short": descriptor(digest=f"sha256:{HEX[:-1]}"),
    "sha512 digest of sha256 length": descriptor(digest=f"sha512:{HEX}"),
    "url not absolute": descriptor(urls=["value"]),
    "urls not an array": descriptor(urls="https://example.com/foo"),
    "url with a space": descriptor(urls=["https://example.com/a b"]),
    "artifactType subtype starts with a dot": descriptor(artifactType="foo/.bar"),
    "data without base64 padding": descriptor(
        mediaType="text/plain", size=34, data="aHR0cHM6Ly9naXRodWIuY29tL29wZW5jb250YWluZXJzCg"
    ),
    "data not base64": descriptor(data="not base64!"),
    "annotations value not a string": descriptor(annotations={"a": 1}),
    "annotations not an object": descriptor(annotations=["a"]),
    "platform without os": descriptor(platform={"architecture": "amd64"}),
}

OPENCONTAINERS_DATA = "aHR0cHM6Ly9naXRodWIuY29tL29wZW5jb250YWluZXJzCg=="
OPENCONTAINERS_DIGEST = "sha256:2690af59371e9eca9453dc29882643f46e5ca47ec2862bd517b5e17351325153"

DESCRIPTOR_SUCCESSES = {
    "required fields": descriptor(),
    "empty blob of size 0": descriptor(mediaType="text/plain", size=0, digest=EMPTY_DIGEST),
    "mediaType type of 127 characters": descriptor(mediaType="a" * 127 + "/bar"),
    "mediaType subtype of 127 characters": descriptor(mediaType="foo/" + "b" * 127),
    "absolute url": descriptor(urls=["https://example.com/foo"]),
    "data matching digest and size": descriptor(
        mediaType="text/plain", size=34, data=OPENCONTAINERS_DATA, digest=OPENCONTAINERS_DIGEST
    ),
    "unregistered algorithm sha256+b64": descriptor(digest=f"sha256+b64:{HEX}"),
    "unregistered algorithm sha256+foo-bar": descriptor(digest=f"sha256+foo-bar:{HEX}"),
    "unregistered algorithm sha256.foo-bar": descriptor(digest=f"sha256.foo-bar:{HEX}"),
    "multihash base58": descriptor(digest="multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"),
    "sha256+b64u": descriptor(digest="sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564"),
    "unregistered algorithm with padding in the encoded part": descriptor(
        digest="sha256+b64u.unknownlength:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564="
    ),
    "artifactType naming a registered type": descriptor(artifactType=mt.OCI_MANIFEST),
    "blake3": descriptor(digest=f"blake3:{HEX}"),
    "sha512": descriptor(digest="sha512:" + "ab" * 64),
    "artifactType": descriptor(artifactType="application/vnd.example+type"),
    "annotations": descriptor(annotations={"org.opencontainers.image.title": "x"}),
    "unknown fields are ignored": descriptor(**{"x-extra": {"anything": [1, 2]}}),
    "platform": descriptor(platform={"architecture": "arm64", "os": "linux", "variant": "v8"}),
}


@pytest.mark.parametrize("doc", DESCRIPTOR_FAILURES.values(), ids=DESCRIPTOR_FAILURES.keys())
def test_descriptor_rule_violations_are_reported(doc: dict[str, Any]) -> None:
    assert validate(doc, "descriptor")


@pytest.mark.parametrize("doc", DESCRIPTOR_SUCCESSES.values(), ids=DESCRIPTOR_SUCCESSES.keys())
def test_valid_descriptors_pass(doc: dict[str, Any]) -> None:
    assert validate(doc, "descriptor") == []


def test_data_must_decode_to_the_referenced_content() -> None:
    wrong = descriptor(mediaType="text/plain", size=34, data=OPENCONTAINERS_DATA, digest=DIGEST)
    assert paths(validate(wrong, "descriptor")) == ["$.data"]


def test_data_is_not_checked_against_a_digest_we_cannot_compute() -> None:
    unknown = descriptor(mediaType="text/plain", size=34, data=OPENCONTAINERS_DATA, digest=f"blake3:{HEX}")
    assert validate(unknown, "descriptor") == []


def test_data_length_must_agree_with_size() -> None:
    wrong = descriptor(mediaType="text/plain", size=35, data=OPENCONTAINERS_DATA, digest=f"blake3:{HEX}")
    assert paths(validate(wrong, "descriptor")) == ["$.data"]


def test_every_violation_is_reported_with_its_path() -> None:
    doc = {"mediaType": "application", "size": "1", "digest": "sha256", "urls": ["value"]}
    assert sorted(paths(validate(doc, "descriptor"))) == ["$.digest", "$.mediaType", "$.size", "$.urls[0]"]


# ---------------------------------------------------------------- manifest.md


def _layers(*items: dict[str, Any]) -> list[dict[str, Any]]:
    return list(items)


MANIFEST_FAILURES = {
    "config mediaType invalid": manifest(config={"mediaType": "invalid", "size": 1470, "digest": DIGEST}),
    "config size a string": manifest(config={"mediaType": mt.OCI_CONFIG, "size": "1470", "digest": DIGEST}),
    "layer size a string": manifest(layers=[{"mediaType": mt.OCI_LAYER, "size": "675598", "digest": DIGEST}]),
    "layers empty": manifest(layers=[]),
    "layers missing": manifest(layers=_MISSING),
    "layers not an array": manifest(layers={}),
    "config missing": manifest(config=_MISSING),
    "layer digest with adjacent separators": manifest(
        layers=[{"mediaType": mt.OCI_LAYER, "size": 1, "digest": f"sha256+foo+-b:{HEX}"}]
    ),
    "subject a string": manifest(subject=DIGEST),
    "schemaVersion 1": manifest(schemaVersion=1),
    "schemaVersion 3": manifest(schemaVersion=3),
    "schemaVersion a string": manifest(schemaVersion="2"),
    "schemaVersion missing": manifest(schemaVersion=_MISSING),
    "mediaType of an index": manifest(mediaType=mt.OCI_INDEX),
    "artifactType invalid": manifest(artifactType="foo/.bar"),
    "annotations value not a string": manifest(annotations={"key": True}),
    "empty config without artifactType": manifest(
        config={"mediaType": mt.OCI_EMPTY, "size": 2, "digest": DIGEST}
    ),
    "not an object": ["schemaVersion", 2],
}

MANIFEST_SUCCESSES = {
    "required fields only": manifest(mediaType=_MISSING),
    "with annotations": manifest(annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}),
    "custom config and layer media types": manifest(
        config={"mediaType": "application/vnd.example.config+json", "size": 3, "digest": DIGEST},
        layers=[{"mediaType": "application/vnd.example.data", "size": 9, "digest": DIGEST}],
    ),
    "with subject": manifest(subject={"mediaType": mt.OCI_MANIFEST, "size": 1, "digest": DIGEST}),
    "artifact with empty config": manifest(
        artifactType="application/vnd.example.sbom",
        config={"mediaType": mt.OCI_EMPTY, "size": 2, "digest": EMPTY_JSON_DIGEST, "data": "e30="},
    ),
    "docker schema 2": manifest(mediaType=mt.DOCKER_MANIFEST),
    "unknown fields": manifest(**{"com.example.extra": [1, 2, 3]}),
}


@pytest.mark.parametrize("doc", MANIFEST_FAILURES.values(), ids=MANIFEST_FAILURES.keys())
def test_manifest_rule_violations_are_reported(doc: Any) -> None:
    assert validate(doc, "manifest")


@pytest.mark.parametrize("doc", MANIFEST_SUCCESSES.values(), ids=MANIFEST_SUCCESSES.keys())
def test_valid_manifests_pass(doc: dict[str, Any]) -> None:
    assert validate(doc, "manifest") == []


def test_empty_config_needs_artifact_type_at_the_right_path() -> None:
    doc = manifest(config={"mediaType": mt.OCI_EMPTY, "size": 2, "digest": DIGEST})
    assert paths(validate(doc, "manifest")) == ["$.artifactType"]


def test_registries_may_accept_a_manifest_without_layers() -> None:
    assert validate(manifest(layers=[]), "manifest", allow_empty_layers=True) == []


def test_violations_inside_layers_name_the_layer() -> None:
    layer = descriptor(mediaType=mt.OCI_LAYER)
    doc = manifest(layers=[layer, {**layer, "size": -5}])
    assert paths(validate(doc, "manifest")) == ["$.layers[1].size"]


# ---------------------------------------------------------------- image-index.md


def _entry(**changes: Any) -> dict[str, Any]:
    base = {"mediaType": mt.OCI_MANIFEST, "size": 7143, "digest": DIGEST}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _MISSING}


INDEX_FAILURES = {
    "manifest mediaType invalid": index(manifests=[_entry(mediaType="invalid")]),
    "manifest mediaType empty": index(manifests=[_entry(mediaType="")]),
    "manifest size a string": index(manifests=[_entry(size="7143")]),
    "manifest digest missing": index(manifests=[_entry(digest=_MISSING)]),
    "platform without architecture": index(manifests=[_entry(platform={"os": "linux"})]),
    "platform os a number": index(manifests=[_entry(platform={"os": 1, "architecture": "amd64"})]),
    "subject a string": index(subject=DIGEST),
    "manifests missing": index(manifests=_MISSING),
    "schemaVersion 1": index(schemaVersion=1),
    "mediaType of a manifest": index(mediaType=mt.OCI_MANIFEST),
    "annotations not strings": index(annotations={"a": ["b"]}),
}

INDEX_SUCCESSES = {
    "with platform": index(),
    "without platform": index(manifests=[_entry()]),
    "with annotations": index(annotations={"com.example.key1": "value1"}),
    "custom manifest media type": index(manifests=[_entry(mediaType="application/customized.manifest+json")]),
    "with artifactType": index(artifactType="application/vnd.example+type"),
    "no manifests at all": index(manifests=[]),
    "docker manifest list": index(mediaType=mt.DOCKER_MANIFEST_LIST),
}


@pytest.mark.parametrize("doc", INDEX_FAILURES.values(), ids=INDEX_FAILURES.keys())
def test_index_rule_violations_are_reported(doc: dict[str, Any]) -> None:
    assert validate(doc, "index")


@pytest.mark.parametrize("doc", INDEX_SUCCESSES.values(), ids=INDEX_SUCCESSES.keys())
def test_valid_indexes_pass(doc: dict[str, Any]) -> None:
    assert validate(doc, "index") == []


# ---------------------------------------------------------------- config.md

CONFIG_FAILURES = {
    "os a number": config(os=123),
    "architecture a number": config(architecture=1),
    "variant a number": config(variant=123),
    "os missing": config(os=_MISSING),
    "architecture missing": config(architecture=_MISSING),
    "User a number": with_container_config(User=1234),
    "Env entry without '='": with_container_config(Env=["foo"]),
    "Env entry with an empty name": with_container_config(Env=["=x"]),
    "Env entry a number": with_container_config(Env=[7353]),
    "Volumes an array": with_container_config(Volumes=["/var/job-result-data"]),
    "ExposedPorts not an object": with_container_config(ExposedPorts=["8080/tcp"]),
    "Labels value not a string": with_container_config(Labels={"a": 1}),
    "Cmd a string": with_container_config(Cmd="echo hi"),
    "history a string": config(history="build"),
    "history entry empty_layer a string": config(history=[{"empty_layer": "yes"}]),
    "rootfs type not layers": config(rootfs={"type": "layer", "diff_ids": [EMPTY_DIGEST]}),
    "rootfs missing": config(rootfs=_MISSING),
    "diff_ids missing": config(rootfs={"type": "layers"}),
    "diff_ids invalid digest": config(rootfs={"type": "layers", "diff_ids": ["sha256:abc"]}),
    "created not RFC 3339": config(created="2015-10-31 22:22:56"),
    "created with an impossible date": config(created="2015-02-30T22:22:56Z"),
    "history created not RFC 3339": config(history=[{"created": "yesterday"}]),
}

FULL_CONFIG = config(
    created="2015-10-31T22:22:56.015925234Z",
    author="Alyssa P. Hacker <alyspdev@example.com>",
    variant="v8",
    **{"os.version": "10.0.14393.1066", "os.features": ["win32k"]},
    config={
        "User": "alice",
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "9000": {}},
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin", "EMPTY="],
        "Entrypoint": ["/bin/my-app-binary"],
        "Cmd": ["--foreground", "--config", "/etc/my-app.d/default.cfg"],
        "Volumes": {"/var/job-result-data": {}, "/var/log/my-app-logs": {}},
        "WorkingDir": "/home/alice",
        "Labels": {"com.example.project.git.url": "https://example.com/project.git"},
        "StopSignal": "SIGKILL",
        "ArgsEscaped": True,
    },
    history=[
        {"created": "2015-10-31T22:22:54.690851953Z", "created_by": "/bin/sh -c #(nop) ADD file in /"},
        {"created": "2015-10-31T22:22:55+01:00", "created_by": "/bin/sh -c #(nop) CMD", "empty_layer": True},
    ],
)

CONFIG_SUCCESSES = {
    "required fields only": config(),
    "full config": FULL_CONFIG,
    "no layers at all": config(rootfs={"type": "layers", "diff_ids": []}),
    "Docker's null lists": with_container_config(Env=None, Cmd=None, Labels=None, Volumes=None),
    "unknown fields": config(container="abc", docker_version="1.13"),
}


@pytest.mark.parametrize("doc", CONFIG_FAILURES.values(), ids=CONFIG_FAILURES.keys())
def test_config_rule_violations_are_reported(doc: dict[str, Any]) -> None:
    assert validate(doc, "config")


@pytest.mark.parametrize("doc", CONFIG_SUCCESSES.values(), ids=CONFIG_SUCCESSES.keys())
def test_valid_configs_pass(doc: dict[str, Any]) -> None:
    assert validate(doc, "config") == []


def test_invalid_json_is_a_violation_not_an_exception() -> None:
    assert paths(validate_config(b'{"architecture": "amd64",')) == ["$"]


@pytest.mark.parametrize(
    "raw",
    [b'{"architecture": "\xff"}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"", b"{} {}"],
    ids=["invalid UTF-8 in a string", "invalid UTF-8", "deep nesting", "empty", "trailing data"],
)
def test_undecodable_input_is_one_violation_at_the_root(raw: bytes) -> None:
    assert paths(validate_config(raw)) == ["$"]


def test_env_violation_names_the_entry() -> None:
    assert paths(validate(with_container_config(Env=["A=1", "B"]), "config")) == ["$.config.Env[1]"]


# ---------------------------------------------------------------- image-layout.md


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        (b'{"imageLayoutVersion": "1.0.0"}', True),
        (b'{"imageLayoutVersion": "1.0.1"}', False),
        (b'{"imageLayoutVersion": "2.0.0"}', False),
        (b'{"imageLayoutVersion": 1}', False),
        (b"{}", False),
        (b'["imageLayoutVersion"]', False),
        (b"imageLayoutVersion: 1.0.0", False),
    ],
)
def test_layout_header(raw: bytes, valid: bool) -> None:
    assert (validate_layout_header(raw) == []) is valid


# ---------------------------------------------------------------- entry points


def test_byte_entry_points_agree_with_validate() -> None:
    pairs = [
        (validate_manifest, manifest(), "manifest"),
        (validate_index, index(), "index"),
        (validate_config, config(), "config"),
        (validate_descriptor, descriptor(size=-1), "descriptor"),
    ]
    for function, doc, kind in pairs:
        assert function(json.dumps(doc).encode()) == validate(doc, kind)
        assert validate_document(json.dumps(doc).encode(), kind) == validate(doc, kind)


def test_check_raises_with_every_violation() -> None:
    doc = manifest(schemaVersion=1, layers=[])
    with pytest.raises(ValidationFailed) as caught:
        check(json.dumps(doc).encode(), "manifest")
    assert paths(caught.value.violations) == ["$.schemaVersion", "$.layers"]


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown document type"):
        validate({}, "manifestt")


def test_validation_does_not_modify_the_document() -> None:
    doc = manifest(annotations={"a": "b"})
    before = copy.deepcopy(doc)
    validate(doc, "manifest")
    assert doc == before


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        (manifest(), "manifest"),
        (manifest(mediaType=_MISSING), "manifest"),
        (index(), "index"),
        (index(mediaType=_MISSING), "index"),
        (config(), "config"),
        (descriptor(), "descriptor"),
        (descriptor(mediaType=mt.OCI_CONFIG), "descriptor"),
        ({"imageLayoutVersion": "1.0.0"}, "layout"),
        ({"hello": "world"}, None),
        ([1, 2], None),
    ],
)
def test_infer_type(doc: Any, kind: str | None) -> None:
    assert infer_type(doc) == kind
