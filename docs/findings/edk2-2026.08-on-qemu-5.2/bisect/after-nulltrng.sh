#!/bin/bash
# When the bad end with ArmTrngLib mapped to the Null library is built, check it on QEMU 5.2 and 7.2.
while ! grep -q "^build " /tmp/edk2src/nulltrng-build.out; do
  pgrep -f "provider-build.sh /work/edk2-work/edk2" >/dev/null || break
  sleep 20
done
cd /tmp/edk2src/checks
FV=/work/edk2-work/edk2/Build/bootwatch/release-no-secboot/Build/ArmVirtQemu-AArch64/RELEASE_GCC/FV
cp $FV/QEMU_EFI.fd nulltrng-code.fd && truncate -s 64M nulltrng-code.fd
cp $FV/QEMU_VARS.fd nulltrng-vars.fd && truncate -s 64M nulltrng-vars.fd
for q in debian:bullseye host; do
  s=$(date +%s)
  /tmp/edk2src/bootwatch-bisect check --qemu $q --firmware path:/tmp/edk2src/checks/nulltrng-code.fd,/tmp/edk2src/checks/nulltrng-vars.fd \
    --disk /tmp/edk2src/fixtures/hello.img --timeout 180 --silence 60 --results /tmp/edk2src/checks/results > nulltrng-$q.out 2>&1
  echo "$q exit=$? $(( $(date +%s)-s ))s $(date -u +%T)" >> nulltrng-summary.txt
done
