import subprocess, socket, time, sys, os
code, vars_, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
mon = '/tmp/edk2src/forensic/mon.sock'
if os.path.exists(mon): os.unlink(mon)
args = ['/tmp/edk2src/q52.sh','-M','virt','-cpu','cortex-a72','-m','512','-nodefaults','-display','none',
  '-serial','file:console.txt','-monitor',f'unix:{mon},server,nowait',
  '-drive',f'if=pflash,format=raw,unit=0,readonly=on,file={code}','-drive',f'if=pflash,format=raw,unit=1,file={vars_}',
  '-boot','menu=on,splash-time=0'] + extra
[os.path.exists(f) and os.unlink(f) for f in ['console.txt']]
p = subprocess.Popen(args)
t0=time.time()
while time.time()-t0 < 170:
    time.sleep(0.5)
    try:
        if 'Synchronous Exception' in open('console.txt', errors='replace').read(): break
    except FileNotFoundError: pass
time.sleep(2)
s = socket.socket(socket.AF_UNIX); s.connect(mon)
def cmd(c):
    s.sendall((c+'\n').encode()); time.sleep(1.5)
    return s.recv(1<<20).decode(errors='replace')
cmd('')
for c in os.environ.get('MONCMDS','').split(';'):
    if c.strip(): print(cmd(c.strip()))
cmd('quit'); p.wait(); print('elapsed', time.time()-t0)
