#!/bin/bash
# Mirror of edk2_source::plan() for RELEASE no-secboot (same WORKSPACE layout, so the provider
# later reuses this workspace incrementally and ccache's entries).
set -euo pipefail
T=${1:-/work/edk2-work/edk2}
cd "$T"
/work/edk2-work/bin/fill-submodules.sh .
if grep -q '^RELEASE_GCC_AARCH64_CC_FLAGS' BaseTools/Conf/tools_def.template; then TC=GCC; else TC=GCC5; fi
WS=$T/Build/bootwatch/release-no-secboot
mkdir -p $WS/Conf
cp BaseTools/Conf/target.template $WS/Conf/target.txt
cp BaseTools/Conf/tools_def.template $WS/Conf/tools_def.txt
cp BaseTools/Conf/build_rule.template $WS/Conf/build_rule.txt
t0=$(date +%s)
make -C $T/BaseTools/Source/C -j2 >/dev/null
t1=$(date +%s); echo "basetools $((t1-t0))s"
cd $WS
env WORKSPACE=$WS PACKAGES_PATH=$T EDK_TOOLS_PATH=$T/BaseTools CONF_PATH=$WS/Conf PYTHON_COMMAND=python3 \
  ${TC}_AARCH64_PREFIX=aarch64-linux-gnu- PATH=/root/.cache/bootwatch/edk2-source/ccache-bin:$T/BaseTools/BinWrappers/PosixLike:$PATH \
  $T/BaseTools/BinWrappers/PosixLike/build -a AARCH64 -t $TC -p ArmVirtPkg/ArmVirtQemu.dsc -b RELEASE -n 2 \
  -DCC_MEASUREMENT_ENABLE=TRUE -DNETWORK_HTTP_BOOT_ENABLE=TRUE -DNETWORK_IP6_ENABLE=TRUE -DNETWORK_TLS_ENABLE \
  --pcd PcdUninstallMemAttrProtocol=TRUE > $WS/build.log 2>&1
t2=$(date +%s); echo "build $((t2-t1))s"
