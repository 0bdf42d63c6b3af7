#!/bin/sh
# edk2 2026.08+ds-2: Synchronous Exception at 0x0000000046693ECC on QEMU 5.2.0 (virt, cortex-a72, TCG)
# Re-runs QEMU with the run's recorded command line: checks each artifact's sha256 first
# (exit 125 when one differs), boots a fresh copy of the vars template, and puts the serial
# console on standard output. Override where the artifacts are with the variables below.
# `bootwatch replay` does the same and judges the boot.
set -eu
QEMU="${QEMU:-${HOME}/.cache/bootwatch/qemu/debian-bullseye-1%3a5.2+dfsg-11+deb11u3/root/usr/bin/qemu-system-aarch64}"
FIRMWARE_CODE="${FIRMWARE_CODE:-${HOME}/.cache/bootwatch/edk2/2026.08+ds-2/AAVMF_CODE.secboot.strictnx.fd}"
VARS_TEMPLATE="${VARS_TEMPLATE:-${HOME}/.cache/bootwatch/edk2/2026.08+ds-2/AAVMF_VARS.fd}"
DISK1="${DISK1:-${HOME}/.cache/bootwatch/fixtures/hello.img}"
check() {
  [ -z "$2" ] && return 0
  got=$(sha256sum "$1" 2>/dev/null | cut -d' ' -f1) || got=missing
  if [ "$got" != "$2" ]; then
    echo "repro.sh: $1 is not the file the run used (sha256 $got, the run's: $2)" >&2
    exit 125
  fi
}
check "${QEMU}" '57d0d6663ff2104db7ca2a41a5b4dea12d0e944dc143d085d88f32692d83f430'
check "${FIRMWARE_CODE}" '23cdb8cb29e929104c09cecaa87eb1ca917ca8839d8953596871900eb1fc16aa'
check "${VARS_TEMPLATE}" 'b3b855c5a80310168051164986855692d1bdb06e67619856177965cd87c6774f'
check "${DISK1}" 'b03e738a43814b4bd68ecde4fca02c4f0ba30deb195e941f08c8e58098b1ca6a'
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp "${VARS_TEMPLATE}" "$WORK/vars.fd"
exec \
  "${HOME}"'/.cache/bootwatch/qemu/debian-bullseye-1%3a5.2+dfsg-11+deb11u3/root/lib/x86_64-linux-gnu/ld-2.31.so' \
  '--library-path' \
  "${HOME}"'/.cache/bootwatch/qemu/debian-bullseye-1%3a5.2+dfsg-11+deb11u3/root/usr/lib/x86_64-linux-gnu:'"${HOME}"'/.cache/bootwatch/qemu/debian-bullseye-1%3a5.2+dfsg-11+deb11u3/root/lib/x86_64-linux-gnu' \
  "${QEMU}" \
  '-name' \
  'bootwatch' \
  '-L' \
  "${HOME}"'/.cache/bootwatch/qemu/debian-bullseye-1%3a5.2+dfsg-11+deb11u3/root/usr/share/qemu' \
  '-machine' \
  'virt,accel=tcg' \
  '-cpu' \
  'cortex-a72' \
  '-smp' \
  '1' \
  '-m' \
  '512M' \
  '-nodefaults' \
  '-no-user-config' \
  '-display' \
  'none' \
  '-chardev' \
  'vc,id=screen0' \
  '-chardev' \
  'stdio,id=serial0,signal=off' \
  '-serial' \
  'chardev:serial0' \
  '-chardev' \
  'socket,id=qmp0,server=on,wait=off,path='"${WORK}"'/qmp.sock' \
  '-mon' \
  'chardev=qmp0,mode=control' \
  '-drive' \
  'if=pflash,format=raw,unit=0,readonly=on,file='"${FIRMWARE_CODE}" \
  '-drive' \
  'if=pflash,format=raw,unit=1,file='"${WORK}"'/vars.fd' \
  '-boot' \
  'menu=on,splash-time=0' \
  '-drive' \
  'if=none,id=disk0,format=raw,snapshot=on,file='"${DISK1}" \
  '-device' \
  'virtio-blk-pci,drive=disk0' \
  '-device' \
  'virtio-rng-pci'
