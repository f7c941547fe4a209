"""Who may do what where: an ordered list of rules in TOML; the first rule that matches the
user, the repository and the action decides, and no matching rule means no.

    [groups]
    ci = ["builder", "deployer"]

    [[rule]]
    users = ["alice", "group:ci"]          # "anonymous", "*" (any signed-in user)
    repositories = ["team-a/*", "base/**"] # * stays within a path segment, ** crosses them
    actions = ["pull", "push", "delete"]

    [[rule]]                               # an explicit refusal stops the search
    users = ["*"]
    repositories = ["secret/**"]
    actions = ["pull", "push", "delete"]
    allow = false

Globs are compiled once per file version and every decision is remembered, so a policy of a
hundred rules costs a dictionary lookup per request once warm.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..hooks import Action
from .files import WatchedFile

__all__ = ["ANONYMOUS", "Policy", "PolicyFile", "Rule", "compile_glob", "parse_policy"]

ANONYMOUS: Final = "anonymous"
_ACTIONS: Final = frozenset({"pull", "push", "delete"})
_MAX_DECISIONS: Final = 100_000


def compile_glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one path segment, ``**`` across segments (also none: ``a/**``
    matches ``a/b`` and ``a/b/c``, and ``**/x`` matches ``x``)."""
    parts, index = ["^"], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:[^/]+/)*")
            index += 3
        elif pattern.startswith("/**", index) and index + 3 == len(pattern):
            parts.append("(?:/.+)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(parts) + "$")


@dataclass(frozen=True, slots=True)
class Rule:
    users: frozenset[str]
    repositories: tuple[re.Pattern[str], ...]
    actions: frozenset[str]
    allow: bool

    def matches_user(self, names: frozenset[str]) -> bool:
        return not self.users.isdisjoint(names)


class Policy:
    """Rules in order plus groups; :meth:`permits` is the decision."""

    def __init__(self, rules: Sequence[Rule], groups: Mapping[str, Sequence[str]]) -> None:
        self.rules = tuple(rules)
        self._groups_of: dict[str, set[str]] = {}
        for group, members in groups.items():
            for member in members:
                self._groups_of.setdefault(member, set()).add(f"group:{group}")
        self._decisions: dict[tuple[str | None, str, str], bool] = {}

    def _names(self, user: str | None) -> frozenset[str]:
        """What rules may name the caller by. Security decision: a user whose name is a
        policy keyword (``anonymous``, ``*``, ``group:…``; a subject an external token server
        may well issue) is not matched by that keyword, so a token for ``group:admins`` is
        no admin."""
        if user is None:
            return frozenset({ANONYMOUS})
        own = () if user in (ANONYMOUS, "*") or user.startswith("group:") else (user,)
        return frozenset({*own, "*", *self._groups_of.get(user, ())})

    def permits(self, user: str | None, repository: str, action: Action) -> bool:
        key = (user, repository, action)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(user, repository, action)
            if len(self._decisions) >= _MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _decide(self, user: str | None, repository: str, action: str) -> bool:
        names = self._names(user)
        for rule in self.rules:
            if (
                action in rule.actions
                and rule.matches_user(names)
                and any(p.match(repository) for p in rule.repositories)
            ):
                return rule.allow
        return False

    def grants_anything(self, user: str | None) -> bool:
        """Whether some rule may let ``user`` pull (catalog access for anonymous callers)."""
        names = self._names(user)
        return any(r.allow and "pull" in r.actions and r.matches_user(names) for r in self.rules)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a non-empty list of strings")
    return list(value)


def parse_policy(data: bytes) -> Policy:
    document = tomllib.loads(data.decode("utf-8"))
    unknown = set(document) - {"rule", "groups"}
    if unknown:
        raise ValueError(f"unknown policy tables: {', '.join(sorted(unknown))}")
    groups = document.get("groups", {})
    if not isinstance(groups, dict):
        raise ValueError("[groups] must map group names to lists of users")
    checked_groups = {name: _strings(members, f"group {name}") for name, members in groups.items()}
    rules = []
    for number, raw in enumerate(document.get("rule", []), 1):
        where = f"rule {number}"
        if not isinstance(raw, dict) or set(raw) - {"users", "repositories", "actions", "allow"}:
            raise ValueError(f"{where}: only users, repositories, actions and allow are known")
        actions = _strings(raw.get("actions"), f"{where} actions")
        if set(actions) - _ACTIONS:
            raise ValueError(f"{where}: actions are pull, push and delete, got {actions}")
        users = _strings(raw.get("users"), f"{where} users")
        for user in users:
            if user.startswith("group:") and user[6:] not in checked_groups:
                raise ValueError(f"{where}: {user} is not in [groups]")
        allow = raw.get("allow", True)
        if not isinstance(allow, bool):
            raise ValueError(f"{where}: allow must be true or false")
        patterns = tuple(compile_glob(p) for p in _strings(raw.get("repositories"), f"{where} repositories"))
        rules.append(Rule(frozenset(users), patterns, frozenset(actions), allow))
    return Policy(rules, checked_groups)


class PolicyFile:
    """A policy file, re-read when it changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = WatchedFile(path, parse_policy)

    @property
    def policy(self) -> Policy:
        return self._file.value

    def __call__(self, user: str | None, repository: str, action: Action) -> bool:
        return self._file.value.permits(user, repository, action)
