"""The import layering of src/ocikit: lower layers never import higher ones.

    spec  <-  store  <-  layers, snapshot  <-  bundle, registry, client  <-  cli

Checked statically with ``ast`` (relative imports resolved), so an import hidden inside a
function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "ocikit"

#: What each sub-package may import from ocikit, besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "spec": frozenset(),
    "store": frozenset({"spec"}),
    "layers": frozenset({"spec", "store"}),
    "snapshot": frozenset({"spec", "store", "layers"}),
    "bundle": frozenset({"spec", "store", "layers", "snapshot"}),
    "registry": frozenset({"spec", "store", "layers", "snapshot"}),
    "client": frozenset({"spec", "store", "layers", "snapshot"}),
}


def _module_name(path: Path) -> str:
    parts = ["ocikit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ocikit_imports(source: str, module: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every ``ocikit.…`` name imported by ``source`` (the text of ``module``), with its line."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ocikit":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "ocikit":
                continue
            if node.module is None or target == "ocikit":
                # ``from .. import x``: each imported name may be a sub-package.
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, target


def _layer_of(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def forbidden(subpackage: str, targets: list[str]) -> list[str]:
    """The imports a module of ``subpackage`` must not make.

    ``spec`` may import nothing of ocikit outside itself; other layers may not import a
    sub-package that is not below them.
    """
    allowed = ALLOWED[subpackage] | {subpackage}
    return [
        target
        for target in targets
        if _layer_of(target) not in allowed
        and (subpackage == "spec" or (PACKAGE / _layer_of(target)).is_dir())
    ]


def violations(subpackage: str) -> list[str]:
    found = []
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        imports = ocikit_imports(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")
        for line, target in imports:
            if forbidden(subpackage, [target]):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    return found


@pytest.mark.parametrize("subpackage", [name for name in ALLOWED if (PACKAGE / name).is_dir()])
def test_lower_layers_do_not_import_higher_ones(subpackage: str) -> None:
    assert violations(subpackage) == []


def test_spec_and_store_exist() -> None:
    assert (PACKAGE / "spec").is_dir()
    assert (PACKAGE / "store").is_dir()


def test_nothing_but_cli_imports_cli() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in PACKAGE.rglob("*.py")
        if "cli" not in path.relative_to(PACKAGE).parts
        for line, target in ocikit_imports(
            path.read_text(), _module_name(path), is_package=path.name == "__init__.py"
        )
        if _layer_of(target) == "cli"
    ]
    assert offenders == []


def test_the_checker_sees_relative_absolute_and_late_imports() -> None:
    """The checker must catch what it is meant to catch, or the tests above prove nothing."""
    source = (
        "from ..registry import app\n"
        "from .. import cli, __version__\n"
        "import ocikit.store.layout_check\n"
        "from . import digest\n"
        "from .models import Descriptor\n"
        "def late():\n"
        "    from ocikit.client import pull\n"
    )
    targets = [target for _, target in ocikit_imports(source, "ocikit.spec.probe")]
    assert targets == [
        "ocikit.registry",
        "ocikit.cli",
        "ocikit.__version__",
        "ocikit.store.layout_check",
        "ocikit.spec.digest",
        "ocikit.spec.models",
        "ocikit.client",
    ]
    assert forbidden("spec", targets) == [
        "ocikit.registry",
        "ocikit.cli",
        "ocikit.__version__",
        "ocikit.store.layout_check",
        "ocikit.client",
    ]
    assert forbidden("store", targets) == ["ocikit.registry", "ocikit.cli", "ocikit.client"]
    package_targets = [
        target for _, target in ocikit_imports("from .spec import x", "ocikit", is_package=True)
    ]
    assert package_targets == ["ocikit.spec"]
