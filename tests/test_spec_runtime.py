"""The runtime-spec config.json model: camelCase names, and unknown keys kept on a round trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocikit.spec.runtime import (
    Hook,
    Hooks,
    Linux,
    LinuxIDMapping,
    LinuxNamespace,
    Mount,
    Process,
    Root,
    RuntimeConfig,
    RuntimeConfigError,
    User,
    dump_runtime_config,
    load_runtime_config,
)

RUNC_STYLE_CONFIG: dict[str, Any] = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": True,
        "consoleSize": {"height": 25, "width": 80},
        "user": {"uid": 0, "gid": 0, "umask": 18, "additionalGids": [5, 6], "username": "root"},
        "args": ["sh"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL"],
            "effective": ["CAP_AUDIT_WRITE"],
            "inheritable": [],
            "permitted": ["CAP_KILL"],
            "ambient": ["CAP_NET_BIND_SERVICE"],
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
        "apparmorProfile": "acme_secure_profile",
        "oomScoreAdj": 100,
        "selinuxLabel": "system_u:system_r:svirt_lxc_net_t:s0:c124,c675",
        "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 4},
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "runc",
    "domainname": "example.org",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/data",
            "type": "bind",
            "source": "/volumes/data",
            "options": ["rbind", "ro"],
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
        },
    ],
    "hooks": {
        "createRuntime": [{"path": "/usr/bin/fix-mounts", "args": ["fix-mounts", "arg1"], "env": ["k=v"]}],
        "poststop": [{"path": "/usr/sbin/cleanup.sh", "args": ["cleanup.sh", "-f"], "timeout": 5}],
        "prestart": [{"path": "/usr/bin/setup-network"}],
        "createContainer": [{"path": "/usr/bin/a"}],
        "startContainer": [{"path": "/usr/bin/b"}],
        "poststart": [{"path": "/usr/bin/notify-start", "timeout": 5}],
    },
    "annotations": {"com.example.key1": "value1"},
    "linux": {
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1234/ns/net"}],
        "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "devices": [
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}
        ],
        "cgroupsPath": "/myRuntime/myContainer",
        "resources": {"memory": {"limit": 536870912}, "devices": [{"allow": False, "access": "rwm"}]},
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "sysctl": {"net.ipv4.ip_forward": "1"},
        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"], "syscalls": []},
        "rootfsPropagation": "slave",
        "mountLabel": "system_u:object_r:svirt_sandbox_file_t:s0:c715,c811",
        "intelRdt": {"closID": "guaranteed_group", "l3CacheSchema": "L3:0=7f0;1=1f"},
        "timeOffsets": {"monotonic": {"secs": 1, "nanosecs": 0}},
        "personality": {"domain": "LINUX"},
    },
    "windows": {"layerFolders": ["C:\\layers"]},
    "vm": {"hypervisor": {"path": "/usr/bin/qemu"}},
}


def test_a_full_config_decodes_into_the_models() -> None:
    config = load_runtime_config(json.dumps(RUNC_STYLE_CONFIG))
    assert config.oci_version == "1.0.2-dev"
    assert config.process is not None
    assert config.process.user == User(uid=0, gid=0, umask=18, additional_gids=[5, 6], username="root")
    assert config.process.console_size is not None
    assert config.process.console_size.width == 80
    assert config.process.capabilities is not None
    assert config.process.capabilities.ambient == ["CAP_NET_BIND_SERVICE"]
    assert config.process.rlimits is not None
    assert config.process.rlimits[0].soft == 1024
    assert config.process.no_new_privileges is True
    assert config.process.oom_score_adj == 100
    assert config.root == Root(path="rootfs", readonly=True)
    assert config.mounts is not None
    assert config.mounts[1].uid_mappings == [LinuxIDMapping(container_id=0, host_id=1000, size=1)]
    assert config.hooks is not None
    assert config.hooks.poststop == [Hook(path="/usr/sbin/cleanup.sh", args=["cleanup.sh", "-f"], timeout=5)]
    assert config.linux is not None
    assert config.linux.namespaces == [
        LinuxNamespace(type="pid"),
        LinuxNamespace(type="network", path="/proc/1234/ns/net"),
    ]
    assert config.linux.devices is not None
    assert config.linux.devices[0].file_mode == 438
    assert config.linux.resources == RUNC_STYLE_CONFIG["linux"]["resources"]
    assert config.linux.intel_rdt == {"closID": "guaranteed_group", "l3CacheSchema": "L3:0=7f0;1=1f"}


def test_unknown_keys_are_captured_where_they_were() -> None:
    config = load_runtime_config(json.dumps(RUNC_STYLE_CONFIG))
    assert set(config.extensions) == {"windows", "vm"}
    assert config.process is not None
    assert config.process.extensions == {"ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 4}}
    assert config.linux is not None
    assert set(config.linux.extensions) == {"timeOffsets", "personality"}


def test_round_trip_keeps_every_key() -> None:
    raw = json.dumps(RUNC_STYLE_CONFIG).encode()
    assert json.loads(dump_runtime_config(load_runtime_config(raw))) == RUNC_STYLE_CONFIG


def test_unknown_keys_deep_inside_are_kept_too() -> None:
    doc = {
        "ociVersion": "1.2.0",
        "process": {"cwd": "/", "user": {"uid": 1, "gid": 1, "x-user": 1}, "rlimits": []},
        "mounts": [{"destination": "/m", "x-mount": {"a": [1]}}],
        "hooks": {"poststop": [{"path": "/h", "x-hook": None}], "x-hooks": True},
        "linux": {"namespaces": [{"type": "user", "x-ns": "y"}]},
    }
    assert json.loads(dump_runtime_config(load_runtime_config(json.dumps(doc)))) == doc


def test_a_key_named_extensions_is_just_another_unknown_key() -> None:
    doc = {"ociVersion": "1.2.0", "extensions": {"a": 1}, "process": {"cwd": "/", "extensions": [1]}}
    config = load_runtime_config(json.dumps(doc))
    assert config.extensions == {"extensions": {"a": 1}}
    assert json.loads(dump_runtime_config(config)) == doc


def test_explicit_false_and_zero_survive() -> None:
    doc = {"ociVersion": "1.2.0", "process": {"cwd": "/", "terminal": False, "oomScoreAdj": 0}}
    assert json.loads(dump_runtime_config(load_runtime_config(json.dumps(doc)))) == doc


def test_models_win_over_extensions_with_the_same_name() -> None:
    config = RuntimeConfig(oci_version="1.2.0", hostname="real", extensions={"hostname": "shadow", "x": 1})
    assert json.loads(dump_runtime_config(config)) == {"ociVersion": "1.2.0", "hostname": "real", "x": 1}


def test_building_a_config_in_python() -> None:
    config = RuntimeConfig(
        oci_version="1.2.0",
        process=Process(cwd="/", args=["/bin/true"], user=User(uid=0, gid=0), no_new_privileges=True),
        root=Root(path="rootfs"),
        mounts=[Mount(destination="/proc", type="proc", source="proc")],
        hooks=Hooks(create_runtime=[Hook(path="/bin/hook")]),
        linux=Linux(
            namespaces=[LinuxNamespace(type="mount")],
            masked_paths=["/proc/kcore"],
            rootfs_propagation="private",
        ),
    )
    node = json.loads(dump_runtime_config(config))
    assert node == {
        "ociVersion": "1.2.0",
        "process": {"cwd": "/", "args": ["/bin/true"], "user": {"uid": 0, "gid": 0}, "noNewPrivileges": True},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "source": "proc", "type": "proc"}],
        "hooks": {"createRuntime": [{"path": "/bin/hook"}]},
        "linux": {
            "namespaces": [{"type": "mount"}],
            "maskedPaths": ["/proc/kcore"],
            "rootfsPropagation": "private",
        },
    }
    assert load_runtime_config(dump_runtime_config(config)) == config


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"ociVersion": "\xff"}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[]", "JSON object"),
        (b"{}", "ociVersion"),
        (b'{"ociVersion": "1.2.0", "process": {"args": []}}', "cwd"),
        (
            b'{"ociVersion": "1.2.0", "process": {"cwd": "/", "user": {"uid": "root"}}}',
            r"\$\.process\.user\.uid",
        ),
        (b'{"ociVersion": "1.2.0", "mounts": {"destination": "/"}}', r"\$\.mounts"),
        (b'{"ociVersion": "1.2.0", "linux": {"namespaces": [{"path": "/x"}]}}', "type"),
    ],
)
def test_invalid_configs_are_refused_with_the_path(raw: bytes, message: str) -> None:
    with pytest.raises(RuntimeConfigError, match=message):
        load_runtime_config(raw)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_unknown = st.dictionaries(st.text(min_size=1, max_size=8).map(lambda k: f"x-{k}"), _json_values, max_size=3)


@given(_unknown, _unknown, _unknown)
def test_any_unknown_keys_survive(
    top: dict[str, Any], process: dict[str, Any], linux: dict[str, Any]
) -> None:
    doc = {
        "ociVersion": "1.2.0",
        **top,
        "process": {"cwd": "/", **process},
        "linux": {"cgroupsPath": "/c", **linux},
    }
    assert json.loads(dump_runtime_config(load_runtime_config(json.dumps(doc)))) == doc
