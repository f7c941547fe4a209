"""What a tar member's name means: a path inside the root, a whiteout, or a refusal.

Named decisions:

* **Absolute names are taken relative to the root** (leading slashes dropped), as GNU tar,
  containerd and umoci do. Real writers produce them: ``umoci insert ... /`` writes the
  root as ``/``. They cannot escape: every path is resolved inside the root anyway.
* **``..`` components are refused**, even when they would stay inside the root
  (``a/../b``): a well-formed layer never needs them, and refusing is simpler to reason
  about than cleaning them.
* **NUL bytes are refused**: no file system name can hold one.
* ``.`` components and repeated or trailing slashes are dropped (``./etc//x/`` is ``etc/x``).
* **Whiteouts** are recognised by the last component only. ``.wh.`` with nothing, ``.`` or
  ``..`` after it names no sibling and is refused, as layer.md says it should be. A
  ``.wh.`` prefix on a *parent* component would put files under a whiteout, which cannot
  exist, and is refused. Names starting ``.wh..wh.`` other than the opaque marker are aufs
  bookkeeping (``.wh..wh.plnk``, ``.wh..wh.aufs``) that old Docker layers carry; they are
  skipped with a warning, as Docker itself does.
"""

from __future__ import annotations

from typing import Final

from .errors import UnsafePath

__all__ = ["OPAQUE", "WHITEOUT_PREFIX", "Name", "classify", "split_name"]

WHITEOUT_PREFIX: Final = b".wh."
OPAQUE: Final = b".wh..wh..opq"
_AUFS_META: Final = b".wh..wh."

Name = tuple[bytes, ...]


def split_name(raw: bytes, what: str = "entry") -> Name:
    """The components of a member name inside the root; ``()`` is the root itself."""
    if b"\x00" in raw:
        raise UnsafePath(f"the {what} name {raw!r} contains a NUL byte")
    parts = tuple(part for part in raw.split(b"/") if part and part != b".")
    if b".." in parts:
        raise UnsafePath(f"the {what} name {raw!r} has a '..' component, which could leave the root")
    return parts


def classify(parts: Name, raw: bytes) -> tuple[str, bytes]:
    """``("entry", b"")``, ``("opaque", b"")``, ``("whiteout", hidden name)`` or ``("aufs", b"")``."""
    for part in parts[:-1]:
        if part.startswith(WHITEOUT_PREFIX):
            if part.startswith(_AUFS_META):
                return "aufs", b""
            raise UnsafePath(f"the entry {raw!r} lies under a whiteout name, which cannot exist")
    last = parts[-1] if parts else b""
    if not last.startswith(WHITEOUT_PREFIX):
        return "entry", b""
    if last == OPAQUE:
        return "opaque", b""
    if last.startswith(_AUFS_META):
        return "aufs", b""
    hidden = last[len(WHITEOUT_PREFIX) :]
    if hidden in (b"", b".", b".."):
        raise UnsafePath(
            f"the whiteout {raw!r} names no sibling to remove (layer.md: such a whiteout is invalid)"
        )
    return "whiteout", hidden
