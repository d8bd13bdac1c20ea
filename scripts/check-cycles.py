#!/usr/bin/env python3
"""Fails on an import cycle between the modules of any crate of the workspace (ARCHITECTURE.md:
"no module imports a module that imports it back").

Every path a module names (`use crate::a::b`, `crate::a::f()`, `super::x`, `self::x`, a child's
`x::y`) is resolved to the module file it lands in. A child naming its parent's items is not an
edge (the parent owns the namespace: traits in mod.rs, implementations in children); every
other edge must form a DAG. Tests modules at the bottom of a file are ignored.

Usage: python3 scripts/check-cycles.py [WORKSPACE_ROOT]"""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else '.'
def crates():
    for c in sorted(os.listdir(root)):
        src = os.path.join(root, c, 'src')
        if os.path.isfile(os.path.join(root, c, 'Cargo.toml')) and os.path.isdir(src):
            yield c, src
def modules(src):
    mods = {}
    for d, _, fs in os.walk(src):
        for f in fs:
            if not f.endswith('.rs'): continue
            rel = os.path.relpath(os.path.join(d, f), src)[:-3].split(os.sep)
            if rel[0] == 'bin': continue
            if rel[-1] in ('mod', 'lib', 'main'): rel = rel[:-1]
            mods[tuple(rel)] = os.path.join(d, f)
    return mods
def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', text, flags=re.S)  # tests at the bottom
    return text
bad = 0
for crate, src in crates():
    mods = modules(src)
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        text = strip(open(path).read())
        # expand use groups: crate::{a, b::c}
        paths = []
        for u in re.finditer(r'\b(crate|super|self)((?:::\w+)+)(::\{([^;]*?)\})?', text):
            base = [u.group(1)] + u.group(2).split('::')[1:]
            paths.append(base)
            if u.group(4):
                for part in re.split(r',', u.group(4)):
                    part = part.strip().split(' as ')[0].strip('{} ')
                    if part: paths.append(base + part.split('::'))
        children = {k[-1] for k in mods if len(k) == len(m) + 1 and k[:len(m)] == m}
        for u in re.finditer(r'(?<![:\w])(\w+)((?:::\w+)+)', text):
            if u.group(1) in children:
                paths.append(['self', u.group(1)] + u.group(2).split('::')[1:])
        for p in paths:
            if p[0] == 'crate': cur = []; rest = p[1:]
            else:
                cur = list(m)
                rest = p[1:]
                if p[0] == 'super': cur = cur[:-1]
                while rest and rest[0] == 'super': cur = cur[:-1]; rest = rest[1:]
            target = tuple(cur)
            for seg in rest:
                if tuple(list(target) + [seg]) in mods: target = tuple(list(target) + [seg])
                else: break
            # A child naming its parent's (or an ancestor's) items is how a module owns its
            # namespace (traits in mod.rs, implementations in children): not an edge.
            if target == m[:len(target)]:
                continue
            if target != m and target in mods:
                # a parent naming its own child module's items is the usual pattern only if the
                # child does not name the parent back; record the edge and let cycles speak
                edges[m].add(target)
    # find 2-cycles and longer via DFS
    seen_cycles = set()
    def dfs(start, node, stack):
        for n in edges[node]:
            if n == start:
                cyc = tuple(sorted(stack))
                if cyc not in seen_cycles:
                    seen_cycles.add(cyc); print(f'{crate}: cycle: ' + ' -> '.join('::'.join(x) or 'lib' for x in stack + [start]))
            elif n not in stack and len(stack) < 6:
                dfs(start, n, stack + [n])
    for m in mods: dfs(m, m, [m])
    bad += len(seen_cycles)
print(f'{bad} import cycle(s)')
sys.exit(1 if bad else 0)
