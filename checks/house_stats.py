"""`python -m checks.house_stats [ROOT]`: the code's size and shape, read from its syntax trees (tests left out).

Lines per package, the longest functions, and the functions over 6 parameters (self and cls not counted) or
over 50 lines: the figures of docs/architecture.md's house rules, for any checkout (`git worktree add` an older
commit to compare).
"""
import ast
import sys
from collections import Counter
from pathlib import Path

PACKAGES = ("edge_runtime", "runlib", "train", "export", "benchmark", "checks", "edgeclf")


def functions(root):
    """(lines, parameters, 'path:line name') of every function in the packages under root."""
    out = []
    for path in sorted(Path(root).rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in PACKAGES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                out.append((node.end_lineno - node.lineno + 1, len(params), f"{rel}:{node.lineno} {node.name}"))
    return out


def main(argv=None):
    root = Path((argv if argv is not None else sys.argv[1:])[0] if (argv or sys.argv[1:]) else ".")
    if not any((root / p).is_dir() for p in PACKAGES):
        print(f"error: {root}: no package of this project in it (expected {', '.join(PACKAGES)})", file=sys.stderr)
        return 2
    lines = Counter()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in PACKAGES:
            lines[rel.parts[0]] += len(path.read_text(encoding="utf-8").splitlines())
    found = functions(root)
    print("lines per package:", ", ".join(f"{k} {v:,}" for k, v in sorted(lines.items())))
    print(f"functions: {len(found)}, median {sorted(f[0] for f in found)[len(found) // 2]} lines")
    print("longest:", "; ".join(f"{n} lines {where}" for n, _, where in sorted(found, reverse=True)[:5]))
    print("over 6 parameters:", sum(p > 6 for _, p, _ in found), "| over 50 lines:", sum(n > 50 for n, _, _ in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
