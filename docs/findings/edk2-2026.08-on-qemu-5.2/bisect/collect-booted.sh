#!/bin/bash
# Copy the booted bisect's small text records into booted/ (no firmware images, no build logs):
# steps.tsv, run.log, `git bisect log`, and for every step its check JSON and its run's
# case.json, result.json, console.log, qmp.jsonl. Safe to re-run while the bisect goes on.
set -euo pipefail
OUT=/tmp/edk2src/bisect T=/work/edk2-work/edk2
D=$(cd "$(dirname "$0")" && pwd)/booted
mkdir -p "$D/steps"
cp $OUT/steps.tsv $OUT/run.log "$D/"
for f in log-with-false-skips.txt log-with-stale-fv.txt; do [ -f $OUT/$f ] && cp $OUT/$f "$D/"; done
git -C $T bisect log > "$D/git-bisect.log" 2>/dev/null || true
for j in $OUT/steps/*.check.json; do
  c=$(basename "$j" .check.json)
  [ -s "$j" ] || continue # the step under way (or one that was stopped) has written nothing yet
  cp "$j" "$D/steps/"
  cp $OUT/steps/$c.fill.log "$D/steps/" 2>/dev/null || true
  for run in $(python3 -c 'import json,sys; [print(r["dir"]) for r in json.load(open(sys.argv[1])).get("runs",[])]' "$j"); do
    mkdir -p "$D/steps/$c.run"
    for f in case.json result.json console.log qmp.jsonl; do cp "$run/$f" "$D/steps/$c.run/" 2>/dev/null || true; done
  done
done
du -sh "$D"
# The archive mirror a run used is this machine's, not part of the evidence (and no archive host
# is written into the repository): the records name it as <mirror>.
grep -rlE 'https?://[^ "]*/debian' "$D" | xargs -r sed -i -E 's#https?://[^ "/]+/debian#<mirror>#g'
