#!/bin/bash
# One `git bisect run` step over an edk2 checkout: fill the submodules by the commit's pins from
# Debian's source package (a wrapper only because the tree's submodules cannot be fetched here),
# then `bootwatch check` (exit 0 good, 1 bad, 125 skip). Logs one line per step.
set -u
T=/work/edk2-work/edk2 BW=/tmp/edk2src/bootwatch-bisect OUT=/tmp/edk2src/bisect
mkdir -p $OUT/steps
c=$(git -C $T rev-parse --short=10 HEAD)
t0=$(date +%s)
if ! /work/edk2-work/bin/fill-submodules.sh $T > $OUT/steps/$c.fill.log 2>&1; then
  echo -e "$c\t125\t$(( $(date +%s)-t0 ))\tsubmodules could not be filled" >> $OUT/steps.tsv; exit 125
fi
"$BW" check "$@" > $OUT/steps/$c.check.json 2> $OUT/steps/$c.check.err
rc=$?
echo -e "$c\t$rc\t$(( $(date +%s)-t0 ))\t$(date -u +%FT%TZ)" >> $OUT/steps.tsv
exit $rc
