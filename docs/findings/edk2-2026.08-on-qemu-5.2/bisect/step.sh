#!/bin/bash
# One `git bisect run` step over an edk2 checkout: fill the submodules by the commit's pins from
# Debian's source package (a wrapper only because the tree's submodules cannot be fetched here),
# then `bootwatch check --json` (exit 0 good, 1 bad, 125 skip) with the arguments given.
# Logs one line per step to $OUT/steps.tsv: commit, exit, seconds (fill + build + boot),
# end time (UTC), 1-minute load average at the end.
set -u
T=/work/edk2-work/edk2 BW=${BOOTWATCH:-/work/edk2-work/bin/bootwatch} OUT=${STEP_OUT:-/tmp/edk2src/bisect}
mkdir -p $OUT/steps
c=$(git -C $T rev-parse --short=10 HEAD)
t0=$(date +%s)
if ! /work/edk2-work/bin/fill-submodules.sh $T > $OUT/steps/$c.fill.log 2>&1; then
  echo -e "$c\t125\t$(( $(date +%s)-t0 ))\t$(date -u +%FT%TZ)\t$(cut -d' ' -f1 /proc/loadavg)\tsubmodules could not be filled" >> $OUT/steps.tsv; exit 125
fi
# BaseTools' make dependency files can name headers this commit does not have (a step going back
# across the commit that added one): make would stop with "No rule to make target" (exit 125, a
# false skip). Drop those, so the objects are rebuilt.
/work/edk2-work/bin/prune-stale-deps.py $T >> $OUT/steps/$c.fill.log 2>&1
# ArmVirtQemu.dsc's OUTPUT_DIRECTORY changed in the range (Build/ArmVirtQemu-$(ARCH), i.e.
# -AARCH64, before; Build/ArmVirtQemu-AArch64 after), so the workspace can hold two platform
# directories, and the provider publishes the FV of the last one by name ("AArch64" sorts after
# "AARCH64"), which may be another commit's. Remove every QEMU_EFI.fd but this commit's.
od=$(git -C $T show HEAD:ArmVirtPkg/ArmVirtQemu.dsc | sed -n 's/^ *OUTPUT_DIRECTORY *= *//p' | sed 's/\$(ARCH)/AARCH64/' | tr -d '\r ')
for fd in $T/Build/bootwatch/*/Build/*/*/FV/QEMU_EFI.fd; do
  [ -e "$fd" ] || continue
  case "$fd" in */$od/*) ;; *) echo "removed $fd (not this commit's OUTPUT_DIRECTORY $od)" >> $OUT/steps/$c.fill.log; rm -f "$fd";; esac
done
"$BW" check --json "$@" > $OUT/steps/$c.check.json 2> $OUT/steps/$c.check.err
rc=$?
echo -e "$c\t$rc\t$(( $(date +%s)-t0 ))\t$(date -u +%FT%TZ)\t$(cut -d' ' -f1 /proc/loadavg)" >> $OUT/steps.tsv
exit $rc
