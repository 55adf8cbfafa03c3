#!/usr/bin/env python3
"""Import circles between the runtime's source files.

Reads every `crate::...`, `super::...` and `self::...` path in lopt-runtime/src (comments
and `#[cfg(test)]` modules written in the same file included; `tests.rs` files skipped,
they are the tests of their folder), maps each to the file that defines that module, and
prints the strongly connected components of more than one file: each is an import circle.
`mod x;` declarations are not imports (a folder's mod.rs naming its files is not a
circle), nor are re-exports (`pub use`, `pub(crate) use`: a facade gives an item a
second path, as `ad::op` names every marker; it is not code using code). An edge on a
line under a comment that says `import circle kept` (the reason follows it) is reported
as kept. Exits 1 when a circle without a kept edge is found.

    python3 scripts/import_cycles.py [lopt-runtime/src]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "lopt-runtime", "src")
root = os.path.normpath(root)

files = {}  # module path tuple -> file
for dirpath, _, names in os.walk(root):
    for n in names:
        if not n.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, n), root)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib"):
            rel = rel[:-1]
        if rel and rel[-1] == "tests":
            continue
        files[tuple(rel)] = os.path.join(dirpath, n)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def expand_use(text):
    """`use a::{b, c::{d, e}}` -> paths a::b, a::c::d, a::c::e (roughly)."""
    out = []
    for m in re.finditer(r"(?<!pub )(?<!pub\(crate\) )\buse\s+([^;]+);", text):
        stack = [""]
        prefix = []
        tok = ""
        for ch in m.group(1).replace(" ", "").replace("\n", ""):
            if ch == "{":
                prefix.append(tok)
                tok = ""
            elif ch in ",}":
                if tok:
                    out.append("".join(prefix) + tok)
                tok = ""
                if ch == "}":
                    prefix.pop()
            else:
                tok += ch
        if tok:
            out.append("".join(prefix) + tok)
        del stack
    return out


def owner(path):
    """The longest module prefix of `path` that is a file."""
    for k in range(len(path), -1, -1):
        if tuple(path[:k]) in files:
            return tuple(path[:k])
    return None


edges = {m: set() for m in files}
kept = set()  # (from, to) edges under an `import circle kept` comment
for mod, f in files.items():
    raw = open(f, encoding="utf-8").read()
    # Re-exports are facades, not dependencies.
    raw_code = re.sub(r"\bpub(?:\([^)]*\))?\s+use\s+[^;]+;", "", raw)
    text = strip_comments(raw_code)
    paths = expand_use(text)
    paths += re.findall(r"\b(?:crate|super|self)(?:::\w+)+", text)
    kept_paths = set()
    lines = raw_code.splitlines()
    for i, line in enumerate(lines):
        if "import circle kept" in line.lower():
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("//"):
                j += 1
            if j < len(lines):
                kept_paths.update(re.findall(r"\b(?:crate|super|self)(?:::\w+)+", lines[j]))
    is_dir_mod = os.path.basename(f) in ("mod.rs", "lib.rs")
    for p in paths:
        parts = [s for s in p.split("::") if s]
        if not parts:
            continue
        if parts[0] == "crate":
            abs_path = parts[1:]
        elif parts[0] in ("super", "self"):
            base = list(mod) if is_dir_mod else list(mod[:-1]) + [mod[-1]]
            i = 0
            while i < len(parts) and parts[i] in ("super", "self"):
                if parts[i] == "super":
                    base = base[:-1]
                i += 1
            abs_path = base + parts[i:]
        else:
            continue
        o = owner(abs_path)
        if o is not None and o != mod and len(o) > 0:
            edges[mod].add(o)
            if p in kept_paths:
                kept.add((mod, o))

# Tarjan's strongly connected components.
index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
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
        sccs.append(comp)


sys.setrecursionlimit(10000)
for v in sorted(edges):
    if v not in index:
        visit(v)

circles = [sorted(c) for c in sccs if len(c) > 1]
unexplained = 0
for c in circles:
    inside = [(a, b) for a in c for b in sorted(edges[a]) if b in c]
    why = [e for e in inside if e in kept]
    unexplained += not why
    print("circle" + (" (kept)" if why else "") + ":", " <-> ".join("::".join(m) for m in c))
    for a, b in inside:
        mark = "  [kept]" if (a, b) in kept else ""
        print(f"  {'::'.join(a)} -> {'::'.join(b)}{mark}")
print(f"{len(files)} files, {sum(len(e) for e in edges.values())} import edges, "
      f"{len(circles)} circle(s), {unexplained} without a reason in the code")
sys.exit(1 if unexplained else 0)
