"""ocikit's implementation-defined defaults for a Linux container (conversion.md lets a
converter choose them): close to what ``runc spec`` writes, with the capability set and the
masked paths of containerd's default, which images expect (a root process may chown, bind
a low port, setuid). Everything here is a fresh object on every call, so a caller may
modify what it gets.
"""

from __future__ import annotations

from typing import Final

from ..spec.runtime import Capabilities, Linux, LinuxNamespace, Mount, POSIXRlimit

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PATH",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "capabilities",
    "linux",
    "mounts",
    "rlimits",
]

#: Added to ``process.env`` when the image sets no PATH (conversion.md allows additions only).
DEFAULT_PATH: Final = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_CAPABILITIES: Final = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

MASKED_PATHS: Final = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

READONLY_PATHS: Final = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_NAMESPACES: Final = ("pid", "ipc", "uts", "mount", "network")


def capabilities(*, root: bool) -> Capabilities:
    """The default set bounds every process; only a root process holds it.

    A non-root user gets none effective or permitted (as with a plain setuid() outside a
    container), while the bounding set still limits what a setuid binary can gain.
    """
    caps = list(DEFAULT_CAPABILITIES)
    held = caps if root else []
    return Capabilities(bounding=caps, effective=list(held), permitted=list(held))


def rlimits() -> list[POSIXRlimit]:
    return [POSIXRlimit(type="RLIMIT_NOFILE", hard=1024, soft=1024)]


def mounts() -> list[Mount]:
    return [
        Mount(destination="/proc", type="proc", source="proc", options=["nosuid", "noexec", "nodev"]),
        Mount(
            destination="/dev",
            type="tmpfs",
            source="tmpfs",
            options=["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        Mount(
            destination="/dev/pts",
            type="devpts",
            source="devpts",
            options=["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        Mount(
            destination="/dev/shm",
            type="tmpfs",
            source="shm",
            options=["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        Mount(
            destination="/dev/mqueue", type="mqueue", source="mqueue", options=["nosuid", "noexec", "nodev"]
        ),
        Mount(destination="/sys", type="sysfs", source="sysfs", options=["nosuid", "noexec", "nodev", "ro"]),
        Mount(
            destination="/sys/fs/cgroup",
            type="cgroup",
            source="cgroup",
            options=["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]


def linux() -> Linux:
    return Linux(
        namespaces=[LinuxNamespace(type=name) for name in _NAMESPACES],
        masked_paths=list(MASKED_PATHS),
        readonly_paths=list(READONLY_PATHS),
        # Deny every device; the runtime then allows its own default set (null, zero, tty...).
        resources={"devices": [{"allow": False, "access": "rwm"}]},
    )
