#!/bin/bash
# Run Debian bullseye's QEMU 5.2 from bootwatch's cached root tree (as the debian:bullseye provider does).
D=/root/.cache/bootwatch/qemu/debian-bullseye-1%3a5.2+dfsg-11+deb11u3/root
L=$D/lib64/ld-linux-x86-64.so.2; [ -L $L ] && L=$D$(readlink $L)
export QEMU_MODULE_DIR=$D/usr/lib/x86_64-linux-gnu/qemu
exec $L --library-path $D/usr/lib/x86_64-linux-gnu:$D/lib/x86_64-linux-gnu $D/usr/bin/qemu-system-aarch64 -L $D/usr/share/qemu "$@"
