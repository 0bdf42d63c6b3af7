#!/bin/bash
# AutoGen only (no compile) of RngDxe in ArmVirtQemu at the worktree's commit; prints the
# library constructor order of RngDxe.
set -u
T=/tmp/edk2src/edk2-genc
cd $T
if grep -q '^RELEASE_GCC_AARCH64_CC_FLAGS' BaseTools/Conf/tools_def.template; then TC=GCC; else TC=GCC5; fi
WS=/tmp/edk2src/genc-ws; rm -rf $WS; mkdir -p $WS/Conf
cp BaseTools/Conf/target.template $WS/Conf/target.txt
cp BaseTools/Conf/tools_def.template $WS/Conf/tools_def.txt
cp BaseTools/Conf/build_rule.template $WS/Conf/build_rule.txt
cd $WS
env WORKSPACE=$WS PACKAGES_PATH=$T EDK_TOOLS_PATH=$T/BaseTools CONF_PATH=$WS/Conf PYTHON_COMMAND=python3 \
  ${TC}_AARCH64_PREFIX=aarch64-linux-gnu- PATH=$T/BaseTools/BinWrappers/PosixLike:$PATH \
  $T/BaseTools/BinWrappers/PosixLike/build genc -a AARCH64 -t $TC -p ArmVirtPkg/ArmVirtQemu.dsc -b RELEASE -n 1 \
  -m SecurityPkg/RandomNumberGenerator/RngDxe/RngDxe.inf \
  -DCC_MEASUREMENT_ENABLE=TRUE -DNETWORK_HTTP_BOOT_ENABLE=TRUE -DNETWORK_IP6_ENABLE=TRUE -DNETWORK_TLS_ENABLE \
  --pcd PcdUninstallMemAttrProtocol=TRUE > $WS/genc.log 2>&1 || { tail -5 $WS/genc.log; exit 125; }
f=$(find $WS/Build -path '*RngDxe/DEBUG/AutoGen.c' | head -1)
sed -n '/^ProcessLibraryConstructorList/,/^}/p' $f | grep -o '[A-Za-z]*Constructor (' | tr -d ' (' | tr '\n' ' '; echo
