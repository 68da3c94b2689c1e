"""test_layout.py PREFIX — the ctypes mirror of the header's structs
(cpattn/_lib.py) against the C compiler's layout of the INSTALLED
cpattn.h: a C program prints sizeof and the offsetof of every field of
cpa_tensor, cpa_mask, cpa_split and cpa_cp_config, and each must equal
ctypes'.  A field added to the header without the binding's edit fails here
instead of corrupting memory.  Prints "N passed, N failed".
"""
import ctypes
import os
import subprocess
import sys
import tempfile

from cpattn import _lib

prefix = sys.argv[1]
structs = {"cpa_tensor": _lib.Tensor, "cpa_mask": _lib.Mask, "cpa_split": _lib.Split,
           "cpa_cp_config": _lib.CpConfig}
lines = ["#include <cpattn.h>", "#include <stddef.h>", "#include <stdio.h>", "int main(void) {"]
for cname, py in structs.items():
    lines.append('printf("%s sizeof %%zu\\n", sizeof(%s));' % (cname, cname))
    for f, _ in py._fields_:
        lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));' % (cname, f, cname, f))
lines += ["return 0; }"]
passed = failed = 0
with tempfile.TemporaryDirectory() as tmp:
    src, exe = os.path.join(tmp, "layout.c"), os.path.join(tmp, "layout")
    with open(src, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    env = dict(os.environ)
    env["PKG_CONFIG_PATH"] = os.path.dirname(
        subprocess.check_output(["find", prefix, "-name", "cpattn.pc"], text=True).split()[0])
    cflags = subprocess.check_output(["pkg-config", "--cflags", "cpattn"], text=True,
                                     env=env).split()
    subprocess.check_call(["cc", "-std=c11", "-o", exe, src] + cflags)
    out = subprocess.check_output([exe], text=True)
c = {}
for line in out.splitlines():
    s, f, n = line.split()
    c[(s, f)] = int(n)
for cname, py in structs.items():
    got = {"sizeof": ctypes.sizeof(py)}
    got.update({f: getattr(py, f).offset for f, _ in py._fields_})
    bad = ["%s: C %d, ctypes %d" % (f, c[(cname, f)], n) for f, n in got.items()
           if c[(cname, f)] != n]
    ok = not bad
    print("%s %s layout%s" % ("ok  " if ok else "FAIL", cname, "" if ok else ": " + "; ".join(bad)))
    passed, failed = passed + ok, failed + (not ok)
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
