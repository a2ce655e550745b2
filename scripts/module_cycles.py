#!/usr/bin/env python3
"""Fails when the crate's modules import each other in a cycle (make lint runs it).

Reads `crate::a::b` paths and `use super::x` in every src/**/*.rs (test modules excluded),
groups them by top-level module (commands/ and ffi/ by their submodules) and reports every
strongly connected component larger than one module."""
import glob
import re
import sys

sys.setrecursionlimit(10000)


def node(path: str) -> str:
    parts = path.split("::")
    return "::".join(parts[:2]) if parts[0] in ("commands", "ffi") else parts[0]


def graph(root: str) -> dict:
    edges: dict = {}
    for p in glob.glob(f"{root}/**/*.rs", recursive=True):
        module = p[len(root) + 1 : -3].replace("/mod", "").replace("/", "::")
        if module == "lib":
            continue
        text = open(p, encoding="utf-8").read().split("#[cfg(test)]")[0]
        deps = set(re.findall(r"crate::([a-z_]+(?:::[a-z_]+)?)", text))
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        deps |= {f"{parent}::{d}" if parent else d for d in re.findall(r"use super::([a-z_]+)", text)}
        targets = edges.setdefault(node(module), set())
        targets |= {node(d) for d in deps if node(d) != node(module)}
    return edges


def cycles(edges: dict) -> list:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


if __name__ == "__main__":
    found = cycles(graph(sys.argv[1] if len(sys.argv) > 1 else "src"))
    for c in found:
        print("import cycle: " + " -> ".join(c), file=sys.stderr)
    sys.exit(1 if found else 0)
