"""docs/scale-out.md shows the deployment the tests run: its HAProxy configuration is the one
tests/haproxy.py writes, and its migration script moves a registry's images, with their
referrers, into a running three-replica deployment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from cluster import Cluster, s3_postgres_backend
from conftest import DOCS, ServerProcess, require_tool
from haproxy import haproxy_config
from ocikit.registry.settings import load_settings
from registry_helpers import OCI_INDEX, OCI_MANIFEST, digest, push_blob, push_image, put_manifest

PAGE = DOCS / "scale-out.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), re.S)


def _section(title: str) -> str:
    return PAGE.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_the_documented_haproxy_configuration_is_the_one_the_tests_run() -> None:
    (documented,) = _blocks("haproxy")
    replicas = ["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"]
    assert documented == haproxy_config(5000, 5999, replicas)


def test_the_documented_settings_file_is_the_one_the_tests_run(
    tmp_path: Path, seaweedfs: Any, postgres: Any
) -> None:
    (documented,) = _blocks("toml")
    (tmp_path / "registry.toml").write_text(documented)
    settings = load_settings(environ={}, config_file=tmp_path / "registry.toml")
    assert (settings.storage, settings.s3_endpoint) == ("s3://registry/ocikit", "http://127.0.0.1:8333")
    assert settings.metadata == "postgresql://ocikit@127.0.0.1:5432/ocikit"
    ours = tomllib.loads(s3_postgres_backend(seaweedfs, postgres, tmp_path).config.read_text())["registry"]
    assert set(tomllib.loads(documented)["registry"]) == set(ours)


def test_the_documented_migration_moves_every_tag_and_its_referrers(
    local_registry: ServerProcess, cluster: Cluster
) -> None:
    require_tool("curl", "the documented migration script uses it")
    with local_registry.client() as old:
        images = {f"migrate/app{n}": push_image(old, f"migrate/app{n}", tag="v1") for n in range(2)}
        subject, _ = images["migrate/app0"]
        signature = push_blob(old, "migrate/app0", b"signature")
        referrer = (
            f'{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/example.sig",'
            f'"config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{digest(b"{}")}","size":2}},'
            f'"layers":[{{"mediaType":"application/example.sig","digest":"{signature}","size":9}}],'
            f'"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{len(images["migrate/app0"][1])}}}}}'
        ).encode()
        push_blob(old, "migrate/app0", b"{}")
        assert put_manifest(old, "migrate/app0", digest(referrer), referrer).status_code == 201

    (script,) = re.findall(r"```sh\n(.*?)```", _section("Moving from one machine to the scale-out"), re.S)
    script = re.sub(r"^old=\S+ new=\S+", f"old={local_registry.host} new={cluster.host}", script)
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    with cluster.client() as new:
        for repo, (manifest_digest, body) in images.items():
            served = new.get(f"/v2/{repo}/manifests/v1", headers={"accept": OCI_MANIFEST})
            assert served.status_code == 200
            assert served.content == body
            assert served.headers["docker-content-digest"] == manifest_digest
        referrers = new.get(f"/v2/migrate/app0/referrers/{subject}", headers={"accept": OCI_INDEX}).json()
        assert [m["digest"] for m in referrers["manifests"]] == [digest(referrer)]
        assert new.get(f"/v2/migrate/app0/blobs/{signature}", follow_redirects=True).content == b"signature"
