"""Imports point one way: contracts <- platform <- domains <- jobs <- services <- cli (docs/architecture.md).

Every module under src/millrace is parsed with ``ast``; an import anywhere in it counts (inside functions too),
relative imports are resolved, and so are ``importlib.import_module("millrace...")`` / ``__import__`` calls
with a literal name, so a detour around the rules is caught. A dynamic import of a computed name is allowed
only in the modules of DYNAMIC_IMPORTERS.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import millrace

SRC = Path(millrace.__file__).parent
ROOT = "millrace"

# Bottom to top. A module may import its own component and the components of lower layers; the components of
# one layer are independent of each other. A module belongs to the component of its longest prefix here.
LAYERS: tuple[dict[str, tuple[str, ...]], ...] = (
    # telemetry: the metric objects every layer records into (docs/metrics.md)
    {"contracts": (ROOT, "millrace.config", "millrace.errors", "millrace.records", "millrace.telemetry")},
    {"kafka": ("millrace.kafka",), "stores": ("millrace.stores",)},
    {"runtime": ("millrace.runtime",)},  # managed servers; readiness and topics through the kafka client
    # the domains; processing: pure transforms
    {"iot": ("millrace.iot",), "processing": ("millrace.processing",), "shop": ("millrace.shop",)},
    {"ml": ("millrace.ml",)},  # trains, evaluates and follows models on processing's features
    {"jobs": ("millrace.jobs",)},  # Spark jobs and their I/O: session, query, sinks, window ledger
    {"services": ("millrace.services",)},
    {"cli": ("millrace.cli",)},
)
# Stricter than the layers: pure transforms do no I/O (no Kafka, no stores, no managed servers, no jobs).
FORBIDDEN: dict[str, set[str]] = {"processing": {"jobs", "kafka", "runtime", "stores"}}
# Exact (importer, imported) pairs that break a rule today, each with the reason it stays for now.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}
DYNAMIC_IMPORTERS: dict[str, str] = {
    "millrace.cli.main": "loads its own command modules (millrace.cli.*) by name",
    "millrace.runtime.stack": "registers optional servers of its own package (millrace.runtime.*) by name",
}

LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}
PREFIXES = {prefix: name for layer in LAYERS for name, prefixes in layer.items() for prefix in prefixes}


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path) -> Iterator[tuple[str | None, int]]:
    """(imported name, line) for every import in the module; None for a dynamic import of a computed name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    loaders = {"import_module", "__import__"}
    for node in ast.walk(tree):  # aliases first: `from importlib import import_module as load`
        if isinstance(node, ast.ImportFrom) and node.module == "importlib":
            loaders |= {a.asname for a in node.names if a.name == "import_module" and a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            yield base, node.lineno
            yield from ((f"{base}.{a.name}", node.lineno) for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in loaders:
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    yield arg.value, node.lineno
                else:
                    yield None, node.lineno


def component(module: str) -> str | None:
    matches = [p for p in PREFIXES if module == p or (p != ROOT and module.startswith(p + "."))]
    return PREFIXES[max(matches, key=len)] if matches else None


def edges() -> Iterator[tuple[str, str, str]]:
    """(importer, imported module, where) for imports of millrace modules; dynamic ones as imported ''."""
    known = modules()
    for name, path in sorted(known.items()):
        for target, line in imports_of(name, path):
            where = f"{path.relative_to(SRC.parent)}:{line}"
            if target is None:
                yield name, "", where
            elif target == ROOT or target.startswith(ROOT + "."):
                while target not in known and "." in target:  # `from pkg.module import function`
                    target = target.rpartition(".")[0]
                yield name, target, where


def violations() -> list[str]:
    found = []
    for importer, imported, where in edges():
        if not imported:
            if importer not in DYNAMIC_IMPORTERS:
                found.append(f"{where}: {importer} imports a computed module name (importlib detour)")
            continue
        src, dst = component(importer), component(imported)
        assert src is not None and dst is not None, f"put {importer if src is None else imported} in LAYERS"
        if src == dst or (importer, imported) in KNOWN_EXCEPTIONS:
            continue
        if LAYER_OF[dst] >= LAYER_OF[src] or dst in FORBIDDEN.get(src, ()):
            found.append(f"{where}: {importer} ({src}) imports {imported} ({dst})")
    return list(dict.fromkeys(found))  # `from a.b import c` names a.b twice


def test_imports_follow_the_layers() -> None:
    assert violations() == []


def test_every_known_exception_still_exists() -> None:
    pairs = {(importer, imported) for importer, imported, _ in edges()}
    assert set(KNOWN_EXCEPTIONS) <= pairs, "remove exceptions that no longer occur"
    present = {importer for importer, imported, _ in edges() if not imported}
    assert set(DYNAMIC_IMPORTERS) <= present, "remove dynamic importers that no longer occur"


def test_the_walker_sees_detours_and_relative_imports(tmp_path: Path) -> None:
    path = tmp_path / "__init__.py"
    path.write_text(
        "import importlib\nfrom importlib import import_module as load\nfrom . import records\n"
        "from ..ml import registry\n"
        "def f(name):\n    importlib.import_module('millrace.ml.registry')\n    __import__('millrace.cli')\n"
        "    load(name)\n",
        encoding="utf-8",
    )
    found = {target for target, _ in imports_of("millrace.processing", path)}
    assert {"millrace.processing.records", "millrace.ml.registry", "millrace.cli", None} <= found
