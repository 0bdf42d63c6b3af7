#!/bin/bash
# Proxy step (AutoGen only, no compile): bad (1) when RngDxe's library constructor list runs
# ArmTrngLibConstructor, good (0) when it does not, 125 when AutoGen fails.
T=/tmp/edk2src/edk2-genc
/work/edk2-work/bin/fill-submodules.sh $T >/dev/null 2>&1
out=$(/tmp/edk2src/genc.sh) || { echo "$(git -C $T rev-parse --short=10 HEAD) skip" >> /tmp/edk2src/genc-steps.log; exit 125; }
echo "$(git -C $T rev-parse --short=10 HEAD) $out" >> /tmp/edk2src/genc-steps.log
case "$out" in *ArmTrngLibConstructor*) exit 1;; *) exit 0;; esac
