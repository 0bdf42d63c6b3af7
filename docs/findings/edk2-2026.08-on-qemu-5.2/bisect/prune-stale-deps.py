#!/usr/bin/env python3
"""Remove BaseTools' make dependency files (and their objects) that name a file the checkout no
longer has. BaseTools/Source/C compiles with -MD, so each X.o has an X.d listing the headers it
read; after a checkout that deletes one of them (a bisect step going back across the commit that
added it), `make` stops with "No rule to make target HEADER". Dropping that .d and its .o makes
make recompile the object, which a deleted header requires anyway."""
import pathlib
import sys

root = pathlib.Path(sys.argv[1]) / "BaseTools" / "Source" / "C"
pruned = 0
def make_dir(d):
    """The directory make ran in (the tool's, with its GNUmakefile): .d paths are relative to it."""
    for parent in d.parents:
        if (parent / "GNUmakefile").is_file() or parent == root:
            return parent
    return root


for d in root.rglob("*.d"):
    cwd = make_dir(d)
    text = d.read_text(errors="replace").replace("\\\n", " ")
    for rule in text.splitlines():
        if ":" not in rule:
            continue
        targets, _, prereqs = rule.partition(":")
        if any(not (cwd / p).exists() for p in prereqs.split()):
            for t in targets.split():
                (cwd / t).unlink(missing_ok=True)
            d.unlink()
            pruned += 1
            print(f"pruned {d} (names a file this commit does not have)")
            break
print(f"{pruned} stale dependency files pruned")
