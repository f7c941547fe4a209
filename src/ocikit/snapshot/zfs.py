"""The ``zfs`` snapshotter: one ZFS dataset per snapshot, clones for children, and no other state.

Layout under the parent dataset ``POOL/PATH`` (``--zfs-dataset``, ``OCIKIT_ZFS_DATASET``)::

    POOL/PATH/<id>             a snapshot's filesystem, mounted by ZFS (inherited mountpoint)
    POOL/PATH/<id>@committed   a committed layer; its children are ``zfs clone``\\s of it

A prepare over a committed layer is a ``zfs clone``: constant time, whatever the image size,
and the clone shares every block with its origin. A view is a clone with ``readonly=on``.

**ZFS is the only source of truth.** Each dataset carries its key, kind, labels and times in
user properties (``ocikit:key``...); a committed layer carries its name (the ChainID) and
labels on its ``@committed`` snapshot, and a child's parent is ZFS's own ``origin``. So one
``zfs get -r`` of the parent rebuilds everything, with the state directory deleted, after any
crash. Three property writes are the only switches, each atomic on its own:

* ``ocikit:complete`` set last on a new dataset: before it, the dataset is a half-made prepare;
* ``ocikit:complete`` set last on a new ``@committed`` snapshot: before it, the commit did not
  happen and the dataset is still the active snapshot it was;
* ``ocikit:removing`` set first on removal: after it, the snapshot is gone even if the data is
  still being destroyed.

``cleanup`` destroys what the first and the last leave behind. Every change runs under an
exclusive ``flock`` of the state directory, so anything half-made that cleanup sees belongs to a
dead process. The parent dataset records which state directory manages it (``ocikit:root``), so
that two directories never change one dataset without a common lock.

Why ZFS mounts the datasets itself (``mountpoint`` inherited from the parent) instead of legacy
mounts: zfs-fuse can only mount through its daemon (``zfs mount``; there is no ``mount -t zfs``),
ZFS mounts the datasets again when the pool is imported after a reboot, and the caller's mount is
then a plain bind of that directory, which :mod:`ocikit.snapshot.mounting` already handles and
whose users it can detect.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ._common import Front, _check_key, _check_labels, _now, check_committable, check_mountable, check_parent
from .base import (
    AlreadyExistsError,
    HasChildrenError,
    Info,
    Kind,
    Mount,
    NotFoundError,
    SnapshotError,
    Usage,
)
from .mounting import mounted_sources
from .trees import disk_usage, syncfs

__all__ = ["ENV_DATASET", "ZfsSnapshotter"]

#: Where the parent dataset comes from when no ``zfs_dataset`` option is given.
ENV_DATASET = "OCIKIT_ZFS_DATASET"
_SNAP = "committed"
_P = "ocikit:"
_PROPS = ("key", "kind", "labels", "created", "updated", "complete", "removing", "sealed")
#: A ZFS user property value holds 8 KiB on OpenZFS but less on zfs-fuse: stay well below both.
_MAX_VALUE = 4000
#: Waits between attempts at unmounting or destroying a busy dataset: about 3 s in all.
_BUSY_BACKOFF = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
T = TypeVar("T")


class _ZfsError(SnapshotError):
    def __init__(self, args: Sequence[str], stderr: str) -> None:
        self.stderr = stderr.strip()
        super().__init__(f"zfs {args[0]} {args[-1]} failed: {self.stderr or 'no message'}")

    @property
    def busy(self) -> bool:
        return "busy" in self.stderr


@dataclass
class _Entry:
    """One filesystem or snapshot of ``zfs get`` output: its ocikit properties and origin."""

    name: str
    origin: str | None = None
    props: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.props.get("complete") == "yes"


@dataclass(frozen=True)
class _Record:
    key: str
    kind: Kind
    dataset: str
    parent: str | None  # the parent's key
    labels: dict[str, str]
    created: str
    updated: str

    def info(self) -> Info:
        return Info(self.key, self.kind, self.parent, dict(self.labels), self.created, self.updated)


@dataclass
class _State:
    """What one listing says: the snapshots, and the debris of crashed operations."""

    records: dict[str, _Record] = field(default_factory=dict)
    #: Datasets never completed, or being removed: destroyed by cleanup.
    debris: list[_Entry] = field(default_factory=list)
    #: ``@committed`` snapshots whose commit never completed.
    stale_snapshots: list[str] = field(default_factory=list)
    #: Committed datasets not yet made read-only (a crash right after the commit switch).
    writable_committed: list[str] = field(default_factory=list)

    def children(self, key: str) -> list[str]:
        return [r.key for r in self.records.values() if r.parent == key]


def _encode(value: object, what: str) -> str:
    """JSON, ASCII only: no tab or newline can break ``zfs get -H`` lines, no ``-`` is ambiguous."""
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    if len(text) > _MAX_VALUE:
        raise SnapshotError(f"{what} is too long for a ZFS user property ({len(text)} > {_MAX_VALUE})")
    return text


def _decoded(entry: _Entry, prop: str, kind: type[T]) -> T:
    """A property as written by :func:`_encode`; anything else was changed by hand."""
    try:
        value = json.loads(entry.props[prop])
    except (KeyError, ValueError):
        value = None
    if not isinstance(value, kind):
        raise SnapshotError(f"zfs {entry.name}: property {_P}{prop} is missing or damaged")
    return value


def _record(entry: _Entry, snap: _Entry | None, parent: str | None) -> _Record:
    """A dataset as a snapshot: a committed one when its ``@committed`` snapshot is complete."""
    named = snap if snap is not None else entry
    kind = Kind.COMMITTED
    if snap is None:
        if entry.props.get("kind") not in (Kind.ACTIVE, Kind.VIEW):
            raise SnapshotError(f"zfs {entry.name}: property {_P}kind is missing or damaged")
        kind = Kind(entry.props["kind"])
    labels = _decoded(named, "labels", dict)
    if not all(isinstance(v, str) for v in labels.values()):
        raise SnapshotError(f"zfs {named.name}: property {_P}labels is damaged")
    return _Record(
        _decoded(named, "key", str),
        kind,
        entry.name,
        parent,
        labels,
        _decoded(entry, "created", str),
        _decoded(named, "updated", str),
    )


def _choose_dataset(root: Path, option: str | None, recorded: str | None) -> str:
    """The option, else the dataset the state directory was first opened with (so reopening
    needs nothing), else the environment; an option contradicting the record is refused."""
    if option and recorded and option != recorded:
        raise SnapshotError(f"{root} manages zfs dataset {recorded}, not {option}")
    dataset = option or recorded or os.environ.get(ENV_DATASET)
    if not dataset:
        raise SnapshotError(
            f"the zfs snapshotter needs a parent dataset: --zfs-dataset POOL/PATH or {ENV_DATASET}"
        )
    return dataset


def _check_dataset(name: str) -> str:
    parts = name.split("/")
    if len(parts) < 2 or not all(parts) or "@" in name or any(c.isspace() for c in name):
        raise SnapshotError(f"invalid zfs dataset {name!r}: give POOL/PATH (a dataset below the pool)")
    return name


class ZfsSnapshotter(Front):
    """Snapshots as datasets under ``zfs_dataset``; ``root`` holds only the lock."""

    name = "zfs"
    options = ("zfs_dataset",)

    def __init__(self, root: str | os.PathLike[str], *, zfs_dataset: str | None = None) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        zfs = shutil.which("zfs")
        if zfs is None:
            raise SnapshotError("the zfs snapshotter needs the zfs command (zfsutils-linux or zfs-fuse)")
        self._zfs = zfs
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = self.root / "zfs-dataset"
        recorded = record.read_text().strip() if record.exists() else None
        self.dataset = _check_dataset(_choose_dataset(self.root, zfs_dataset, recorded))
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with self._locked():
                self._adopt_parent()
                if recorded is None:
                    record.write_text(self.dataset + "\n")
                self._cleanup_locked(self._state())
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -------------------------------------------------------------- setup

    def _adopt_parent(self) -> None:
        """Create the parent dataset if needed, check it can hold mounted children, and claim it
        for this state directory unless another existing one manages it."""
        if not self._exists(self.dataset):
            self._run("create", "-p", self.dataset)
        mountpoint, owner = self._get(self.dataset, "mountpoint", f"{_P}root")
        if not mountpoint.startswith("/"):
            raise SnapshotError(
                f"zfs dataset {self.dataset} has mountpoint={mountpoint}; its children must be mountable: "
                f"zfs set mountpoint=/some/dir {self.dataset}"
            )
        if owner != str(self.root):
            other = Path(owner) / "zfs-dataset"
            if owner.startswith("/") and other.exists() and other.read_text().strip() == self.dataset:
                raise SnapshotError(
                    f"zfs dataset {self.dataset} is managed from {owner}; open that state directory "
                    "(or delete it to move the dataset here)"
                )
            self._run("set", f"{_P}root={self.root}", self.dataset)
        self._mountpoint = Path(mountpoint)

    # -------------------------------------------------------------- running zfs

    def _attempt(self, *args: str) -> str | _ZfsError:
        """The command's output, or the error it failed with (the caller decides)."""
        result = subprocess.run(
            [self._zfs, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
        if result.returncode != 0:
            return _ZfsError(args, result.stderr)
        return result.stdout

    def _exists(self, name: str) -> bool:
        return isinstance(self._attempt("list", "-H", "-o", "name", "-t", "all", name), str)

    def _run(self, *args: str) -> str:
        out = self._attempt(*args)
        if isinstance(out, _ZfsError):
            raise out
        return out

    def _run_patiently(self, *args: str) -> None:
        """Run a command that fails while the dataset is busy (a process has files open or its
        working directory inside), retrying with a bounded backoff."""
        for delay in (*_BUSY_BACKOFF, None):
            out = self._attempt(*args)
            if isinstance(out, str):
                return
            if not out.busy or delay is None:
                raise out
            time.sleep(delay)

    def _get(self, dataset: str, *props: str) -> list[str]:
        out = self._run("get", "-H", "-p", "-o", "value", ",".join(props), dataset)
        return out.rstrip("\n").split("\n")

    # -------------------------------------------------------------- reading the state

    def _listing(self) -> dict[str, _Entry]:
        """One ``zfs get`` of everything below the parent: the whole state in one consistent read.

        Only locally set values count: a snapshot inherits its filesystem's user properties,
        and an unset user property reads as ``-`` with source ``-`` (hence JSON values, which
        are never a bare ``-``)."""
        wanted = ["origin", *(_P + p for p in _PROPS)]
        out = self._run(
            "get",
            "-H",
            "-p",
            "-r",
            "-s",
            "local,none",
            "-o",
            "name,property,value,source",
            ",".join(wanted),
            self.dataset,
        )
        entries: dict[str, _Entry] = {}
        for line in out.splitlines():
            name, prop, rest = line.split("\t", 2)
            value, _, source = rest.rpartition("\t")
            entry = entries.setdefault(name, _Entry(name))
            if prop == "origin":
                entry.origin = None if value == "-" else value
            elif source != "local":
                continue
            else:
                entry.props[prop[len(_P) :]] = value
        return entries

    def _state(self) -> _State:
        entries = self._listing()
        state = _State()
        committed_keys: dict[str, str] = {}  # "<dataset>@committed" -> key
        datasets: list[tuple[_Entry, _Entry | None]] = []
        for name, entry in entries.items():
            parent, _, leaf = name.rpartition("/")
            if parent != self.dataset or "@" in leaf or "key" not in entry.props:
                continue  # the parent, deeper datasets, foreign snapshots: not made by ocikit
            snap = entries.get(f"{name}@{_SNAP}")
            if not entry.complete or "removing" in entry.props:
                state.debris.append(entry)
                continue
            if snap is not None and not snap.complete:
                state.stale_snapshots.append(snap.name)
                snap = None
            if snap is not None:
                committed_keys[snap.name] = _decoded(snap, "key", str)
            datasets.append((entry, snap))
        datasets.sort(key=lambda pair: (pair[0].props.get("created", ""), pair[0].name))
        for entry, snap in datasets:
            if snap is not None and "sealed" not in entry.props:
                state.writable_committed.append(entry.name)
            parent_key = committed_keys.get(entry.origin or "")
            if entry.origin and parent_key is None:
                raise SnapshotError(
                    f"zfs dataset {entry.name} is a clone of {entry.origin}, which is no committed snapshot"
                )
            record = _record(entry, snap, parent_key)
            state.records[record.key] = record
        return state

    def _find(self, state: _State, key: str) -> _Record:
        try:
            return state.records[key]
        except KeyError:
            raise NotFoundError(f"no snapshot {key!r}") from None

    # -------------------------------------------------------------- locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd < 0:
            raise SnapshotError("the snapshotter is closed")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -------------------------------------------------------------- mounting

    def _mounted_at(self, dataset: str) -> Path:
        """The dataset's mount point, mounting it first if it is not (after a reboot, say)."""
        mountpoint, mounted = self._get(dataset, "mountpoint", "mounted")
        if mounted != "yes":
            self._run("mount", dataset)
        return Path(mountpoint)

    @staticmethod
    def _mounts(kind: Kind, where: Path) -> list[Mount]:
        return [Mount("bind", str(where), ("rbind", "ro" if kind is Kind.VIEW else "rw"))]

    def _users(self, where: Path) -> list[str]:
        """Mounts involving the dataset's mount point, other than ZFS's own mount of it."""
        if not where.is_dir():
            return []
        users = mounted_sources(where)
        if str(where) in users:
            users.remove(str(where))
        return users

    # -------------------------------------------------------------- the Snapshotter API

    def _create(
        self, kind: Kind, key: str, parent: str | None, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        now = _now()
        props = {
            "key": _encode(_check_key(key), "the key"),
            "kind": kind.value,
            "labels": _encode(_check_labels(labels), "the labels"),
            "created": _encode(now, "a time"),
            "updated": _encode(now, "a time"),
        }
        options = [arg for prop, value in props.items() for arg in ("-o", f"{_P}{prop}={value}")]
        if kind is Kind.VIEW:
            options += ["-o", "readonly=on"]
        with self._locked():
            state = self._state()
            if key in state.records:
                raise AlreadyExistsError(f"snapshot {key!r} already exists")
            origin = None
            if parent is not None:
                parent_record = self._find(state, _check_key(parent, "parent"))
                check_parent(parent, parent_record.kind)
                origin = f"{parent_record.dataset}@{_SNAP}"
            dataset = f"{self.dataset}/{secrets.token_hex(8)}"
            try:
                if origin is None:
                    self._run("create", *options, dataset)
                else:
                    self._run("clone", *options, origin, dataset)
                # zfs create and clone mount the new dataset where it inherits to, or fail.
                where = self._mountpoint / dataset.rsplit("/", 1)[1]
                self._run("set", f"{_P}complete=yes", dataset)
            except BaseException:
                self._destroy_quietly(dataset)
                raise
            return self._mounts(kind, where)

    def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> Info:
        encoded_name = _encode(_check_key(name, "name"), "the name")
        label_map = _check_labels(labels)
        with self._locked():
            state = self._state()
            record = self._find(state, _check_key(key))
            check_committable(key, record.kind)
            if name != key and name in state.records:
                raise AlreadyExistsError(f"snapshot {name!r} already exists")
            merged = {**record.labels, **label_map}
            now = _now()
            snapshot = f"{record.dataset}@{_SNAP}"
            # Whatever a writer left in the kernel's cache must reach ZFS before the snapshot.
            syncfs(self._mounted_at(record.dataset))
            try:
                self._run(
                    "snapshot",
                    "-o",
                    f"{_P}key={encoded_name}",
                    "-o",
                    f"{_P}labels={_encode(merged, 'the labels')}",
                    "-o",
                    f"{_P}updated={_encode(now, 'a time')}",
                    snapshot,
                )
                self._run("set", f"{_P}complete=yes", snapshot)
            except BaseException:
                with contextlib.suppress(SnapshotError):
                    self._run("destroy", snapshot)
                raise
            self._seal(record.dataset)
            return Info(name, Kind.COMMITTED, record.parent, merged, record.created, now)

    def remove(self, key: str) -> None:
        with self._locked():
            state = self._state()
            record = self._find(state, _check_key(key))
            children = state.children(key)
            if children:
                names = ", ".join(map(repr, children[:3]))
                raise HasChildrenError(f"snapshot {key!r} has children ({names}); remove them first")
            mountpoint, mounted = self._get(record.dataset, "mountpoint", "mounted")
            if mounted == "yes":
                users = self._users(Path(mountpoint))
                if users:
                    raise SnapshotError(
                        f"snapshot {key!r} is in use: mounted at {', '.join(users)}; unmount it first"
                    )
                try:
                    self._run_patiently("unmount", record.dataset)
                except _ZfsError as exc:
                    if not exc.busy:
                        raise
                    raise SnapshotError(
                        f"snapshot {key!r} is in use: dataset {record.dataset} is busy "
                        "(a process has files open or its working directory in it)"
                    ) from None
            self._run("set", f"{_P}removing=yes", record.dataset)
            self._reap(record.dataset)

    def _reap(self, dataset: str) -> bool:
        """Destroy a dataset already marked removed (or never completed). A ``@committed``
        snapshot that something outside ocikit still clones or holds is destroyed deferred
        (``zfs destroy -d``): it goes with its last clone, and the dataset at a later cleanup."""
        snapshot = f"{dataset}@{_SNAP}"
        if self._exists(snapshot):
            self._run_patiently("destroy", "-d", snapshot)
            if self._exists(snapshot):
                return False
        self._run_patiently("destroy", "-r", dataset)
        return True

    def _destroy_quietly(self, dataset: str) -> None:
        """Undo a half-made dataset; if even that fails, cleanup will find it incomplete."""
        with contextlib.suppress(SnapshotError):
            if self._exists(dataset):
                self._run_patiently("destroy", "-r", dataset)

    def stat(self, key: str) -> Info:
        return self._find(self._state(), _check_key(key)).info()

    def walk(self) -> Iterator[Info]:
        """Parents first: a clone is always created after the snapshot it clones."""
        for record in self._state().records.values():
            yield record.info()

    def usage(self, key: str) -> Usage:
        """``used``: the blocks only this snapshot holds (a clone shares the rest with its
        parent). Inodes are counted in the tree, since ZFS keeps no count per dataset."""
        record = self._find(self._state(), _check_key(key))
        (used,) = self._get(record.dataset, "used")
        with self._locked():
            where = self._mounted_at(record.dataset)
        return Usage(size=int(used), inodes=disk_usage(where).inodes)

    def mounts(self, key: str) -> list[Mount]:
        record = self._find(self._state(), _check_key(key))
        check_mountable(key, record.kind)
        with self._locked():
            return self._mounts(record.kind, self._mounted_at(record.dataset))

    def path_of(self, key: str) -> Path:
        """The mount point of the snapshot's dataset (read-only for committed snapshots)."""
        record = self._find(self._state(), _check_key(key))
        with self._locked():
            return self._mounted_at(record.dataset)

    def cleanup(self) -> None:
        with self._locked():
            self._cleanup_locked(self._state())

    def _cleanup_locked(self, state: _State) -> None:
        for entry in state.debris:
            with contextlib.suppress(SnapshotError):
                if "removing" not in entry.props:
                    self._run("set", f"{_P}removing=yes", entry.name)
                self._reap(entry.name)
        for snapshot in state.stale_snapshots:
            with contextlib.suppress(SnapshotError):
                self._run("destroy", snapshot)
        for dataset in state.writable_committed:
            self._seal(dataset)

    def _seal(self, dataset: str) -> None:
        """After the commit switch, make the layer's own filesystem read-only so that it never
        drifts from its snapshot. ``ocikit:sealed`` says it was done: zfs-fuse reports a mounted
        dataset's ``readonly`` wrongly, so the property itself cannot tell."""
        self._run("set", "readonly=on", dataset)
        self._run("set", f"{_P}sealed=yes", dataset)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __repr__(self) -> str:
        return f"<ZfsSnapshotter {self.dataset} {self.root}>"
