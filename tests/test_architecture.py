"""The dependency direction of DESIGN.md §3, checked on the source text (``ast``, nothing imported).

``market`` imports nothing of ours; ``db`` and ``settlement`` import only ``market`` (not each
other); ``client``, ``widgets`` and ``magics`` never import ``db`` — they talk to the server over
HTTP/WS. Every import counts, also one inside a function or under ``if TYPE_CHECKING:``: a lazy
import is still a dependency. Rules for layers that do not exist yet bite as soon as they appear.
"""

from __future__ import annotations

import ast
import dataclasses
import textwrap
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "qubix_jupyter"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: layer → the only other layers of ours it may import ("" is the package root, ``qubix_jupyter``).
ONLY: dict[str, frozenset[str]] = {
    "market": frozenset(),
    "db": frozenset({"market"}),
    "settlement": frozenset({"market"}),
}
#: layer → layers of ours it must never import.
NEVER: dict[str, frozenset[str]] = {
    "client": frozenset({"db"}),
    "widgets": frozenset({"db"}),
    "magics": frozenset({"db"}),
}

_SKIP_DIRS = {"__pycache__", "node_modules"}


@dataclasses.dataclass(frozen=True, slots=True)
class Import:
    path: Path
    line: int
    module: str  # the importing module
    target: str  # the module of ours it imports


def layer_of(module: str, package: str = PACKAGE) -> str:
    """``qubix_jupyter.db.models`` → ``db``; ``qubix_jupyter.magics`` → ``magics``; root → ``""``"""
    parts = module.split(".")
    assert parts[0] == package, module
    return parts[1] if len(parts) > 1 else ""


def modules_of(package_dir: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every ``.py`` file below ``package_dir`` by its dotted module name."""
    found: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        parts = [package, *rel.parts[:-1]]
        if rel.name != "__init__.py":
            parts.append(rel.stem)
        found[".".join(parts)] = path
    return found


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str | None:
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start from its package
    if level - 1 >= len(base):
        return None  # beyond the top-level package: not ours (and not valid)
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _dynamic_import(call: ast.Call) -> str | None:
    """The module named by ``importlib.import_module("…")`` or ``__import__("…")``, if constant."""
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name not in {"import_module", "__import__"} or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_in(
    path: Path, module: str, known: set[str], package: str = PACKAGE
) -> Iterator[Import]:
    """Each import of one of our modules in the file at ``path``, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"

    def ours(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                source = _resolve_relative(module, is_package, node.level, node.module)
                if source is None:
                    continue
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the submodule pkg.sub when there is one.
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.append(sub if sub in known else source)
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)) is not None:
            targets = [name]
        for target in targets:
            if ours(target):
                yield Import(path, node.lineno, module, target)


def violations(package_dir: Path = PACKAGE_DIR, package: str = PACKAGE) -> list[str]:
    """``file:line: what is wrong`` for each import that breaks the layer rules."""
    modules = modules_of(package_dir, package)
    known = set(modules)
    found = []
    for module, path in modules.items():
        layer = layer_of(module, package)
        # one report per line and target, however many names that line imports
        for imp in dict.fromkeys(imports_in(path, module, known, package)):
            target = layer_of(imp.target, package)
            if target == layer and layer:
                continue
            if layer in ONLY and target not in ONLY[layer]:
                allowed = ", ".join(sorted(ONLY[layer])) or "nothing of ours"
                why = f"{layer or 'the root'} may import only {allowed}"
            elif target in NEVER.get(layer, ()):
                why = f"{layer} must never import {target}"
            else:
                continue
            found.append(f"{path}:{imp.line}: {module} imports {imp.target} ({why})")
    return found


# ------------------------------------------------------------------------ the real package


def test_the_checker_sees_every_layer_of_the_package() -> None:
    layers = {layer_of(m) for m in modules_of(PACKAGE_DIR)}
    assert {"market", "db", "settlement"} <= layers
    # the import that created the violations this test guards against is resolved as such
    known = set(modules_of(PACKAGE_DIR))
    store = PACKAGE_DIR / "db" / "settlement_store.py"
    targets = {i.target for i in imports_in(store, f"{PACKAGE}.db.settlement_store", known)}
    assert f"{PACKAGE}.market.payouts" in targets


def test_layers_import_only_downwards() -> None:
    found = violations()
    assert not found, "layer rules of DESIGN.md §3 broken:\n" + "\n".join(found)


def test_the_payout_domain_is_one_set_of_objects_with_the_qubic_limit() -> None:
    from qubix_jupyter.market import payouts
    from qubix_jupyter.settlement.backends import base
    from qubix_jupyter.settlement.transaction import MAX_AMOUNT

    assert payouts.MAX_TRANSFER_AMOUNT == MAX_AMOUNT
    for name in ("PayoutState", "PayoutStatus", "PAYOUT_TRANSITIONS", "MAX_TRANSFER_AMOUNT"):
        assert getattr(base, name) is getattr(payouts, name), name


# ------------------------------------------------------------------------ the checker can fail

_BAD_TREE = {
    "__init__.py": "from . import market\n",
    "market/__init__.py": "",
    "market/money.py": "from .errors import X\n",  # fine: its own layer
    "market/errors.py": "import os\nfrom ..db import models\n",  # line 2: market → db
    "db/__init__.py": "",
    "db/models.py": "from ..market import money\n",  # fine
    "db/store.py": "from ..market.money import Y\nfrom ..settlement.base import A, B\n",
    "settlement/__init__.py": "",
    "settlement/base.py": (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from qubix_jupyter.db.models import Row\n"  # line 4: hidden still counts
        "def make():\n"
        "    from ..db import store\n"  # line 6: lazy still counts
        "    return store\n"
    ),
    "settlement/rpc.py": (
        "import importlib\n"
        "from ..market.errors import QubixError\n"  # fine
        "mod = importlib.import_module('qubix_jupyter.db.store')\n"  # line 3
        "from .. import config\n"  # line 4: settlement → a root module
    ),
    "config.py": "",
    "magics.py": "from qubix_jupyter import db\n",  # line 1
    "widgets/__init__.py": "",
    "widgets/panel.py": "import qubix_jupyter.db.models as m\nfrom ..client import api\n",
    "client/__init__.py": "",
    "client/api.py": "from ..market import money\nfrom .. import market\n",  # fine
    "client/x.py": "from ...db import models\n",  # beyond the package: not ours, ignored
}


def test_the_checker_reports_each_bad_import_with_file_and_line(tmp_path: Path) -> None:
    package_dir = tmp_path / PACKAGE
    for name, source in _BAD_TREE.items():
        path = package_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")

    found = violations(package_dir)

    assert len(found) == len(set(found)), found
    where = sorted(v.split(": ", 1)[0] for v in found)
    assert where == sorted(
        f"{package_dir / name}:{line}"
        for name, line in [
            ("market/errors.py", 2),
            ("db/store.py", 2),
            ("settlement/base.py", 4),
            ("settlement/base.py", 6),
            ("settlement/rpc.py", 3),
            ("settlement/rpc.py", 4),
            ("magics.py", 1),
            ("widgets/panel.py", 1),
        ]
    ), "\n".join(found)
    assert any(
        "qubix_jupyter.db.store imports qubix_jupyter.settlement.base "
        "(db may import only market)" in v
        for v in found
    ), found
    assert any("magics must never import db" in v for v in found), found
