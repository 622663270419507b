"""The package's architecture: no import cycle among the modules of one package (``TYPE_CHECKING`` imports count).

The import-linter ``layers`` contract in ``pyproject.toml`` (``lint-imports``) orders the sub-packages; this test
covers what it cannot see: two modules of the same package importing each other, directly or round a loop, which
a ``TYPE_CHECKING`` guard or an import inside a function only hides (STYLE.md, "The shape of the package").
"""

from __future__ import annotations

import grimp
import pytest

PACKAGE = "edgekd"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, include_external_packages=False, exclude_type_checking_imports=False)


def _child(module: str, package: str) -> str | None:
    """The direct child of ``package`` that holds ``module`` (a module or a sub-package), or None."""
    if not module.startswith(package + "."):
        return None
    return package + "." + module[len(package) + 1 :].split(".")[0]


def _sibling_edges(graph: grimp.ImportGraph, package: str) -> dict[str, set[str]]:
    """Imports between the direct children of ``package`` (a sub-package stands for all its modules); the
    package's own ``__init__`` is left out: it re-exports its modules by design."""
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        src = _child(module, package)
        if src is None:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            dst = _child(imported, package)
            if dst is not None and dst != src:
                edges.setdefault(src, set()).add(dst)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _packages(graph: grimp.ImportGraph) -> list[str]:
    return sorted({m.rsplit(".", 1)[0] for m in graph.modules if "." in m} | {PACKAGE})


def test_the_cycle_finder_finds_a_loop_and_passes_a_chain():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}}) == []


def test_no_import_cycle_within_a_package(graph):
    found = {pkg: cycles for pkg in _packages(graph) if (cycles := _cycles(_sibling_edges(graph, pkg)))}
    assert not found, "import cycles (modules of one package importing each other): " + "; ".join(
        f"{pkg}: {' <-> '.join(c)}" for pkg, cycles in found.items() for c in cycles
    )


def test_a_cycle_hidden_under_type_checking_is_found(tmp_path, monkeypatch):
    """The graph includes ``if TYPE_CHECKING:`` imports, or the check above would miss the cycles they hide."""
    pkg = tmp_path / "hidden_cycle"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from hidden_cycle.b import B\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hidden_cycle.a import A\nB = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    g = grimp.build_graph("hidden_cycle", include_external_packages=False, exclude_type_checking_imports=False)
    assert _cycles(_sibling_edges(g, "hidden_cycle")) == [["hidden_cycle.a", "hidden_cycle.b"]]


def test_a_public_name_means_one_thing_across_export_bench_pipeline_and_serve():
    """Issue 22: two ``Precision``, ``Skipped``, ``ModelInfo``, ``Runner``... meant different things."""
    import importlib

    owners: dict[str, dict[int, str]] = {}
    for pkg in ("edgekd.export", "edgekd.bench", "edgekd.pipeline", "edgekd.serve"):
        mod = importlib.import_module(pkg)
        for name in mod.__all__:
            owners.setdefault(name, {})[id(getattr(mod, name))] = pkg
    clashes = {name: sorted(by.values()) for name, by in owners.items() if len(by) > 1}
    assert not clashes, f"one name, different things: {clashes}"


def test_renamed_bench_names_still_import_with_a_deprecation_warning():
    import edgekd.bench as bench

    for old, new in (("Precision", "ComputePrecision"), ("Skipped", "SkippedRun")):
        with pytest.warns(DeprecationWarning, match=new):
            assert getattr(bench, old) is getattr(bench, new)
        assert old not in bench.__all__
    with pytest.raises(AttributeError):
        bench.NoSuchName  # noqa: B018
