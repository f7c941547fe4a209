"""Image config -> runtime config, rule by rule (conversion.md), and schema-valid for any image."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle_helpers import GROUP, PASSWD
from ocikit.bundle import BundleError, Overrides, annotations_for, hostname_for, runtime_config
from ocikit.bundle.defaults import DEFAULT_PATH
from ocikit.spec.models import ImageConfig
from ocikit.spec.runtime import RuntimeConfig, dump_runtime_config
from runtime_schema import schema_errors


@pytest.fixture(scope="module")
def root_fd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("rootfs")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def image(config: dict[str, Any] | None = None, **top: Any) -> ImageConfig:
    document = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, **top}
    if config is not None:
        document["config"] = config
    return msgspec.convert(document, ImageConfig)


def convert(
    root_fd: int, config: dict[str, Any], overrides: Overrides | None = None, **top: Any
) -> RuntimeConfig:
    result = runtime_config(image(config, **top), root_fd, overrides)
    assert schema_errors(msgspec.json.decode(dump_runtime_config(result))) == []
    return result


def process(result: RuntimeConfig) -> Any:
    assert result.process is not None
    return result.process


@pytest.mark.parametrize(
    ("config", "overrides", "args"),
    [
        ({"Entrypoint": ["/e", "1"], "Cmd": ["c"]}, Overrides(), ["/e", "1", "c"]),
        ({"Cmd": ["/c", "x"]}, Overrides(), ["/c", "x"]),
        ({"Entrypoint": ["/e"]}, Overrides(), ["/e"]),
        ({"Entrypoint": ["/e"], "Cmd": ["c"]}, Overrides(args=["a"]), ["/e", "a"]),
        ({"Entrypoint": ["/e"], "Cmd": ["c"]}, Overrides(args=[]), ["/e"]),
        ({"Entrypoint": ["/e"], "Cmd": ["c"]}, Overrides(entrypoint=["/n"]), ["/n"]),
        ({"Entrypoint": ["/e"], "Cmd": ["c"]}, Overrides(entrypoint=["/n"], args=["a"]), ["/n", "a"]),
        # An empty entrypoint override drops Cmd too: nothing is left to run.
        ({"Cmd": ["c"]}, Overrides(entrypoint=[]), None),
    ],
)
def test_entrypoint_and_cmd(
    root_fd: int, config: dict[str, Any], overrides: Overrides, args: list[str] | None
) -> None:
    if args is None:
        with pytest.raises(BundleError, match="neither Entrypoint nor Cmd"):
            convert(root_fd, config, overrides)
    else:
        assert process(convert(root_fd, config, overrides)).args == args


def test_no_command_at_all_is_an_error(root_fd: int) -> None:
    with pytest.raises(BundleError, match="neither Entrypoint nor Cmd"):
        convert(root_fd, {})
    with pytest.raises(BundleError, match="neither Entrypoint nor Cmd"):
        convert(root_fd, None)  # type: ignore[arg-type]


def test_env_is_verbatim_with_additions_only(root_fd: int) -> None:
    env = ["B=2", "A=1", "B=again", "NOVALUE"]
    assert process(convert(root_fd, {"Cmd": ["x"], "Env": env})).env == [*env, DEFAULT_PATH]
    with_path = ["PATH=/only/here", "X=1"]
    assert process(convert(root_fd, {"Cmd": ["x"], "Env": with_path})).env == with_path
    tty = process(convert(root_fd, {"Cmd": ["x"], "Env": with_path}, Overrides(tty=True)))
    assert tty.env == [*with_path, "TERM=xterm"]
    assert tty.terminal is True
    assert process(convert(root_fd, {"Cmd": ["x"], "Env": ["TERM=dumb"]}, Overrides(tty=True))).env == [
        "TERM=dumb",
        DEFAULT_PATH,
    ]


def test_env_overrides_replace_or_append(root_fd: int) -> None:
    overrides = Overrides(env=["B=new", "C=3", "PATH=/p"])
    assert process(convert(root_fd, {"Cmd": ["x"], "Env": ["A=1", "B=2", "B=dup"]}, overrides)).env == [
        "A=1",
        "B=new",
        "C=3",
        "PATH=/p",
    ]
    for bad in ["NOEQUALS", "=value"]:
        with pytest.raises(BundleError, match="invalid environment override"):
            convert(root_fd, {"Cmd": ["x"]}, Overrides(env=[bad]))


def test_working_dir_user_and_terminal(root_fd: int) -> None:
    default = process(convert(root_fd, {"Cmd": ["x"]}))
    assert (default.cwd, default.terminal, default.user.uid, default.user.gid) == ("/", False, 0, 0)
    assert default.no_new_privileges is True
    assert "CAP_CHOWN" in default.capabilities.effective
    alice = process(convert(root_fd, {"Cmd": ["x"], "WorkingDir": "/srv/app", "User": "alice"}))
    assert alice.cwd == "/srv/app"
    assert (alice.user.uid, alice.user.gid, alice.user.additional_gids) == (1000, 1000, [50, 29])
    assert alice.capabilities.effective == []  # no privileges for an unprivileged user...
    assert "CAP_CHOWN" in alice.capabilities.bounding  # ...but setuid binaries still work
    override = process(convert(root_fd, {"Cmd": ["x"], "User": "alice"}, Overrides(user="0", workdir="/tmp")))
    assert (override.user.uid, override.cwd) == (0, "/tmp")
    with pytest.raises(BundleError, match="absolute"):
        convert(root_fd, {"Cmd": ["x"], "WorkingDir": "relative/dir"})
    with pytest.raises(BundleError, match="does not exist"):
        convert(root_fd, {"Cmd": ["x"], "User": "nobody-known"})


def test_implicit_annotations_and_label_precedence() -> None:
    full = image(
        {
            "Cmd": ["x"],
            "StopSignal": "SIGQUIT",
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Labels": {"org.opencontainers.image.author": "from a label", "custom": "v"},
        },
        variant="v8",
        author="from the config",
        created="2024-01-02T03:04:05Z",
        **{"os.version": "10.0.1", "os.features": ["a", "b"]},
    )
    assert annotations_for(full) == {
        "org.opencontainers.image.os": "linux",
        "org.opencontainers.image.architecture": "amd64",
        "org.opencontainers.image.variant": "v8",
        "org.opencontainers.image.os.version": "10.0.1",
        "org.opencontainers.image.os.features": "a,b",
        "org.opencontainers.image.author": "from a label",  # Labels win over implicit values
        "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
        "org.opencontainers.image.stopSignal": "SIGQUIT",
        "org.opencontainers.image.exposedPorts": "80/tcp,53/udp",
        "custom": "v",
    }
    caller = annotations_for(full, {"custom": "caller", "org.opencontainers.image.os": "caller"})
    assert caller["custom"] == "caller"
    assert caller["org.opencontainers.image.os"] == "caller"
    assert annotations_for(image({"Cmd": ["x"]})) == {
        "org.opencontainers.image.os": "linux",
        "org.opencontainers.image.architecture": "amd64",
    }


def test_linux_defaults(root_fd: int) -> None:
    result = convert(root_fd, {"Cmd": ["x"]}, Overrides(hostname="web-1"))
    assert result.root is not None
    assert (result.root.path, result.root.readonly, result.hostname) == ("rootfs", False, "web-1")
    assert result.linux is not None
    assert {ns.type for ns in result.linux.namespaces or []} == {"pid", "ipc", "uts", "mount", "network"}
    assert [m.destination for m in result.mounts or []] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert "/proc/kcore" in (result.linux.masked_paths or [])
    assert "/proc/sys" in (result.linux.readonly_paths or [])
    assert [(r.type, r.soft, r.hard) for r in process(result).rlimits] == [("RLIMIT_NOFILE", 1024, 1024)]


def test_only_linux_images(root_fd: int) -> None:
    with pytest.raises(BundleError, match="linux only"):
        runtime_config(image({"Cmd": ["x"]}, os="windows"), root_fd)


def test_hostname_from_a_directory_name() -> None:
    assert hostname_for("My_Bundle.2") == "my-bundle-2"
    assert hostname_for("___") == "ocikit"
    assert len(hostname_for("x" * 100)) == 63


# ------------------------------------------------------------------ any image: a valid config

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_abs = st.lists(st.from_regex(r"[a-z0-9._-]{1,8}", fullmatch=True), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)
_configs = st.fixed_dictionaries(
    {"Cmd": st.lists(_text, min_size=1, max_size=4)},
    optional={
        "Entrypoint": st.lists(_text, max_size=3),
        "Env": st.lists(st.builds(lambda k, v: f"{k}={v}", _name, _text), max_size=5),
        "WorkingDir": _abs,
        "User": st.sampled_from(["", "root", "alice", "bob:audio", "1000", "4242:4343", "alice:0"]),
        "Labels": st.dictionaries(_text, _text, max_size=4),
        "StopSignal": st.sampled_from(["SIGTERM", "SIGRTMIN+3", "9"]),
        "ExposedPorts": st.dictionaries(st.from_regex(r"[0-9]{1,5}/(tcp|udp)", fullmatch=True), st.just({})),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=_configs, tty=st.booleans(), variant=st.none() | st.sampled_from(["v7", "v8"]))
def test_any_image_converts_to_a_schema_valid_config(
    root_fd: int, config: dict[str, Any], tty: bool, variant: str | None
) -> None:
    top = {"variant": variant} if variant else {}
    result = convert(root_fd, config, Overrides(tty=tty), **top)
    proc = process(result)
    assert proc.args == [*config.get("Entrypoint", []), *config["Cmd"]]
    assert proc.env[: len(config.get("Env", []))] == config.get("Env", [])
    assert proc.terminal is tty
    for key, value in config.get("Labels", {}).items():
        assert (result.annotations or {})[key] == value
