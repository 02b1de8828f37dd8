"""The package's shape: no import circles (function-level imports count too) and every flag explained."""

import ast
from pathlib import Path

import fm_edge
from fm_edge.cli import build_parser

PACKAGE = Path(fm_edge.__file__).parent


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the fm_edge modules it imports anywhere in its body (a package's ``__init__`` counts for
    every ``from pkg.sub import x``, since Python runs it first)."""
    mods = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + [base]).strip(
                        "."
                    )
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parents = name.split(".")
                for i in range(2, len(parents) + 1):  # fm_edge.a.b imports fm_edge.a first
                    target = known(".".join(parents[:i]))
                    if target and target != m and target.startswith("fm_edge."):
                        graph[m].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / "fm_edge"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from fm_edge.b import g\n")
    (pkg / "b.py").write_text("from fm_edge import a\n")
    (pkg / "c.py").write_text("import fm_edge.a\n")
    assert cycles(import_graph(pkg)) == [["fm_edge.a", "fm_edge.b"]]


def test_every_flag_has_help_and_every_command_a_description():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description and len(p.description) > 40, name
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"fm-edge {name} {action.option_strings or action.dest} has no help"
        shown = " ".join(p.format_help().split())
        if any(a.dest == "seed" for a in p._actions):
            assert "(default: 0)" in shown, name  # defaults are shown
