"""The layers of odc run one way (docs/architecture.md): every `import` in odc/, at module level
or inside a function, goes down the layer order, and no modules import each other in a cycle
(through a package's `__init__` included)."""
import ast
from pathlib import Path

import networkx as nx

import odc

ROOT = Path(odc.__file__).parent

# the layers, bottom up; a module may import its own layer's modules and those of lower layers
LAYERS = [
    ("leaf", ("odc.errors", "odc.datasets", "odc.schedules", "odc.version")),
    ("ir", ("odc.ir",)),
    ("frontend", ("odc.frontend",)),
    ("codegen", ("odc.codegen",)),
    ("driver", ("odc.program", "odc.checkpoint", "odc.export")),
    ("training", ("odc.runtime",)),
    ("cli", ("odc.cli",)),
]
RANK = {"leaf": 0, "ir": 1, "frontend": 2, "codegen": 2, "driver": 3, "training": 4, "cli": 5}


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = ("odc",) + f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, f in mods.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - n.level + 1] + [base] * bool(base))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in n.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    g.add_edge(name, t)
    return g


def layer(module: str) -> str | None:
    for name, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    return None


def test_every_module_has_a_layer():
    assert [m for m in modules() if m != "odc" and layer(m) is None] == []


def test_no_import_cycles():
    assert list(nx.simple_cycles(import_graph())) == []


def against_layers(g: nx.DiGraph) -> list[str]:
    against = []
    for a, b in g.edges:
        if a == "odc":  # the package's face: odc.load, odc.Program, ...
            continue
        la, lb = layer(a), layer(b)
        if b == "odc" and a != "odc.cli" or b != "odc" and (RANK[lb] > RANK[la] or RANK[lb] == RANK[la] != 0
                                                             and la != lb):
            against.append(f"{a} ({la}) imports {b} ({lb})")
    return against


def test_imports_go_down_the_layers():
    assert against_layers(import_graph()) == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a package where ir imports the driver, which imports ir."""
    pkg = tmp_path / "odc"
    (pkg / "ir").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ir" / "__init__.py").write_text("from odc.program import x\n")
    (pkg / "program.py").write_text("def f():\n    from odc.ir import y\n")
    monkeypatch.setattr(f"{__name__}.ROOT", pkg)
    assert list(nx.simple_cycles(import_graph())) != []
    assert against_layers(import_graph()) == ["odc.ir (ir) imports odc.program (driver)"]
