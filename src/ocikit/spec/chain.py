"""DiffIDs and ChainIDs (image-spec config.md): the identity of a stack of applied layers.

A ChainID names a layer *together with everything beneath it*, which is what a snapshotter
must key committed snapshots by: the same layer on another base is a different filesystem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .digest import Digest, digest_of

__all__ = ["chain_id", "chain_ids"]


def chain_ids(diff_ids: Iterable[str]) -> list[Digest]:
    """ChainID of every prefix of the stack: ``ChainID(L0) = DiffID(L0)``, then
    ``ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))``."""
    result: list[Digest] = []
    for diff_id in diff_ids:
        layer = Digest(diff_id)
        if not result:
            result.append(layer)
        else:
            result.append(digest_of(f"{result[-1]} {layer}".encode()))
    return result


def chain_id(diff_ids: Sequence[str]) -> Digest:
    """The ChainID of the whole stack; an empty stack has none."""
    if not diff_ids:
        raise ValueError("an empty layer stack has no ChainID")
    return chain_ids(diff_ids)[-1]
