#!/usr/bin/env python3
"""Group a `perf record -g` profile into cost buckets: kernel time by the syscall (or softirq) it ran under,
user-space time by crate/library of the sampled (leaf) function.

    perf script -i perf.data -F comm,tid,ip,sym,dso | bench/lib/perf_summary.py [TOP]
"""
import collections
import re
import sys

top = int(sys.argv[1]) if len(sys.argv) > 1 else 15
buckets = collections.Counter()
leafsyms = collections.Counter()
total = 0


def crate_of(sym, dso):
    if "kernel" in dso:
        return None
    if dso.startswith("libc"):
        if "memmove" in sym or "memcpy" in sym or "memset" in sym:
            return "libc memmove/memcpy/memset"
        if "malloc" in sym or "free" in sym or "realloc" in sym or sym.startswith("_int_"):
            return "libc malloc/free (librdkafka)"
        return "libc other"
    if dso.startswith("[vdso"):
        return "vDSO clock_gettime"
    if sym.startswith(("_mi_", "mi_")):
        return "mimalloc"
    if sym.startswith(("rd_", "rd_kafka")) or sym.startswith("rdk"):
        return "librdkafka (C)"
    s = sym.lstrip("<&*")
    s = re.sub(r"^(impl |dyn )", "", s)
    s = s.split(" as ")[0]
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    if m:
        c = m.group(1)
        if c in ("core", "alloc", "std"):
            # name the crate of the generic argument when there is one (e.g. core::ptr::drop_in_place<hyper::..>)
            m2 = re.search(r"<([a-z_][a-z0-9_]*)::", sym)
            if m2 and m2.group(1) not in ("core", "alloc", "std"):
                return m2.group(1) + " (via core/alloc)"
            return "core/alloc/std"
        return c
    return "other: " + sym[:40]


def flush(stack):
    global total
    if not stack:
        return
    total += 1
    sym, dso = stack[0]
    c = crate_of(sym, dso)
    if c is None:
        sc = "kernel: other (interrupts, scheduler)"
        for i, (s, d) in enumerate(stack):
            if s == "do_syscall_64" and i > 0:
                name = re.sub(r"^(__x64_sys_|__se_sys_|__do_sys_|__sys_|do_|ksys_)", "", stack[i - 1][0])
                sc = "kernel: syscall " + name
                break
            if s == "handle_softirqs" and not any(x == "do_syscall_64" for x, _ in stack):
                sc = "kernel: softirq (not in a syscall)"
                break
        buckets[sc] += 1
    else:
        buckets[c] += 1
    leafsyms[(sym, dso)] += 1


stack = []
for line in sys.stdin:
    if not line.strip():
        flush(stack)
        stack = []
        continue
    if line[0] not in " \t":
        flush(stack)
        stack = []
        continue
    m = re.match(r"\s+[0-9a-f]+\s+(.*)\s+\((.*)\)\s*$", line)
    if m:
        sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1).strip())
        stack.append((sym, m.group(2).split("/")[-1]))
flush(stack)
print(f"{total} samples")
for k, v in buckets.most_common(top):
    print(f"{100 * v / total:6.2f}%  {k}")
