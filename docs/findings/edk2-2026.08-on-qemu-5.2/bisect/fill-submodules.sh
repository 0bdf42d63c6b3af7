#!/bin/bash
# Fill the edk2 tree's submodules that ArmVirtQemu needs, by the tree's pinned gitlinks.
# Sources: Debian's edk2 2025.02 orig tarball (openssl 98acb6b=3.4.0, libfdt, mipisyst),
# Debian trixie's openssl 3.5.7 orig tarball (for 3.4.1/3.5.x pins: nearest available),
# google/brotli snapshot (exact pins; c/ and LICENSE).
set -euo pipefail
T=${1:?tree}; cd "$T"
S=/work/edk2-work/debsrc
fill() { # path srcdir
  local p=$1 src=$2
  local want; want="$(pin "$p")	$src"
  if [ -f "$p/.bootwatch-src" ] && [ "$(cat "$p/.bootwatch-src")" = "$src" ]; then # older marker
    echo "$want" > "$p/.bootwatch-filled"; rm -f "$p/.bootwatch-src"; return
  fi
  if [ -f "$p/.bootwatch-filled" ] && [ "$(cat "$p/.bootwatch-filled")" = "$want" ]; then return; fi
  rm -rf "$p"; mkdir -p "$p"; cp -a "$src/." "$p/"; echo "$want" > "$p/.bootwatch-filled"
  echo "filled $p from $src"
}
pin() { git ls-tree HEAD "$1" | awk '{print $3}'; }
case $(pin CryptoPkg/Library/OpensslLib/openssl) in
  # 3.4.0 (edk2-stable202502) exactly; 3.4.1 (a26d853, 2025-02-26..07-17) with 3.4.0, the same minor
  98acb6b02839c609ef5b837794e08d906d965335|a26d85337dbdcd33c971f38eb3fa5150e75cea87) fill CryptoPkg/Library/OpensslLib/openssl $S/sub-2025.02/CryptoPkg/Library/OpensslLib/openssl;;
  *) fill CryptoPkg/Library/OpensslLib/openssl $S/openssl-3.5.7;;
esac
fill MdePkg/Library/BaseFdtLib/libfdt $S/sub-2025.02/MdePkg/Library/BaseFdtLib/libfdt
fill MdePkg/Library/MipiSysTLib/mipisyst $S/sub-2025.02/MdePkg/Library/MipiSysTLib/mipisyst
fill SecurityPkg/DeviceSecurity/SpdmLib/libspdm $S/sub-2025.02/SecurityPkg/DeviceSecurity/SpdmLib/libspdm
fill CryptoPkg/Library/MbedTlsLib/mbedtls $S/sub-2025.02/CryptoPkg/Library/MbedTlsLib/mbedtls
for p in BaseTools/Source/C/BrotliCompress/brotli MdeModulePkg/Library/BrotliCustomDecompressLib/brotli; do
  c=$(pin $p); d=$S/brotli-$c
  if [ ! -d "$d" ]; then
    # Only c/ and LICENSE (all edk2 reads); the snapshot lacks some of brotli's big test files,
    # and a git archive of the whole tree stops at the first one, leaving a partial copy.
    rm -rf "$d.tmp"; mkdir -p "$d.tmp"
    git --git-dir=/work/.mirror/google+brotli/repo archive "$c" -- c LICENSE > "$d.tar"
    tar xf "$d.tar" -C "$d.tmp"; rm -f "$d.tar"; mv "$d.tmp" "$d"
  fi
  fill $p "$d"
done
