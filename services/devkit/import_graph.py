"""Counts what the layer rule is about, from the code itself (every import statement, function bodies too):
import cycles between modules, shared/ importing a service, and one service importing another.

    python -m services.devkit.import_graph [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import grimp

ROOTS = ("shared", "services")
# The composition roots: the only packages allowed to import every service (services.entry is the
# `medqa` console script, which only loads the CLI).
COMPOSERS = ("services.cli", "services.devkit", "services.entry")


def _service(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "services" and len(parts) > 1 else None


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def measure() -> dict:
    graph = grimp.build_graph(*ROOTS, cache_dir=None)
    edges = [(a, b) for a in sorted(graph.modules) for b in sorted(graph.find_modules_directly_imported_by(a))]
    shared_up = [(a, b) for a, b in edges if a.split(".")[0] == "shared" and b.split(".")[0] == "services"]
    sideways = [(a, b) for a, b in edges
                if _service(a) and _service(b) and _service(a) != _service(b) and _service(a) not in COMPOSERS]
    cycles = _cycles(graph)
    return {"modules": len(graph.modules), "imports": len(edges), "cycles": len(cycles),
            "modules_in_cycles": sum(len(c) for c in cycles), "shared_imports_service": len(shared_up),
            "cross_service_imports": len(sideways), "cycle_members": cycles,
            "shared_to_services": [f"{a} -> {b}" for a, b in shared_up],
            "service_to_service": [f"{a} -> {b}" for a, b in sideways]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object with every offending import")
    args = parser.parse_args(argv)
    result = measure()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for line in result["shared_to_services"] + result["service_to_service"]:
            print(line)
        for cycle in result["cycle_members"]:
            print("cycle:", " <-> ".join(cycle))
        summary = {k: v for k, v in result.items() if isinstance(v, int)}
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
