# Which PE image holds an address, from a QEMU `pmemsave BASE LEN dump.bin` of guest RAM:
# the nearest 4 KiB-aligned MZ/PE header at or below the address, and the CodeView path
# GenFw leaves in the image (the module's .dll in the build tree).
#   python3 find-module.py dump.bin 0x46900000 0x469a4ecc [0x469a4498]
import re, struct, sys
d = open(sys.argv[1], 'rb').read(); base = int(sys.argv[2], 16)
addrs = [int(a, 16) for a in sys.argv[3:]]
a = (addrs[0] - base) & ~0xfff
while a >= 0:
    if d[a:a + 2] == b'MZ':
        pe = struct.unpack_from('<I', d, a + 0x3c)[0]
        if d[a + pe:a + pe + 4] == b'PE\0\0':
            break
    a -= 0x1000
print('image base', hex(base + a))
for x in addrs:
    print(hex(x), 'is image offset', hex(x - base - a))
m = re.search(rb'[\x20-\x7e]{8,}\.dll', d[a:a + 0x80000])
print('module', m.group().decode() if m else '?')
