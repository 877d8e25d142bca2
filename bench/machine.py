"""
What a benchmark ran on, recorded with every run: the CPU, the kernel,
the cores, how loaded the machine was at the start (load average, and
the CPU time stolen by the hypervisor over a one-second sample), the
memory and dirty page state, the page-cache residency of the files the
run uses, the tool versions and the git commit.

A number in bench/RESULTS.md without these cannot be compared with
another: issue 19 found committed 4 KiB rows that did not reproduce,
and the run that made them recorded none of this.
"""

import os
import platform
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _cmd(args, cwd=None):
    try:
        out = subprocess.run(args, capture_output=True, text=True,
                             timeout=10, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip()


def cpuModel():
    info = _read("/proc/cpuinfo")
    m = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    mhz = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info,
                                        re.M)]
    flags = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
    hv = "hypervisor" in (flags.group(1).split() if flags else [])
    # A VM may show only "AMD EPYC": family/model tell the generation.
    fms = [re.search(r"^%s\s*:\s*(.*)$" % k, info, re.M)
           for k in ("cpu family", "model", "stepping", "microcode")]
    return "%s (family %s model %s stepping %s, microcode %s), %s MHz%s" % (
        (m.group(1).strip() if m else platform.processor() or "?",)
        + tuple(x.group(1).strip() if x else "?" for x in fms) + (
            "/".join("%.0f" % x for x in mhz) or "?",
            " (under a hypervisor)" if hv else ""))


def idleState():
    """How an idle CPU waits: cpuidle driver, governor, guest halt poll."""
    base = "/sys/devices/system/cpu/cpuidle/"
    drv = _read(base + "current_driver").strip() or "-"
    gov = (_read(base + "current_governor").strip()
           or _read(base + "current_governor_ro").strip() or "-")
    poll = _read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    clock = _read("/sys/devices/system/clocksource/clocksource0/"
                  "current_clocksource").strip() or "?"
    return "cpuidle %s/%s%s; clocksource %s" % (
        drv, gov, ", guest_halt_poll_ns %s" % poll.strip() if poll else "",
        clock)


def _cpuTimes():
    """(total, steal, idle) jiffies over all CPUs, from /proc/stat."""
    line = _read("/proc/stat").split("\n", 1)[0].split()
    if not line or line[0] != "cpu":
        return None
    v = [int(x) for x in line[1:]]
    steal = v[7] if len(v) > 7 else 0
    return sum(v[:8]), steal, v[3] + (v[4] if len(v) > 4 else 0)


def cpuSample(seconds=1.0):
    """Share of CPU time stolen and idle over C{seconds}, in percent."""
    a = _cpuTimes()
    time.sleep(seconds)
    b = _cpuTimes()
    if a is None or b is None or b[0] == a[0]:
        return None
    total = b[0] - a[0]
    return 100.0 * (b[1] - a[1]) / total, 100.0 * (b[2] - a[2]) / total


def meminfo():
    out = {}
    for line in _read("/proc/meminfo").splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "MemAvailable", "Dirty", "Writeback"):
            out[k] = int(v.split()[0]) // 1024
    return out


def residency(path):
    """Share of C{path}'s pages in the page cache (fincore), or None."""
    out = _cmd(["fincore", "--bytes", "--noheadings",
                "--output", "RES,SIZE", path])
    try:
        res, size = (int(x) for x in out.split()[:2])
    except ValueError:
        return None
    return min(100.0, 100.0 * res / size) if size else 100.0


def gitCommit():
    head = _cmd(["git", "rev-parse", "--short=12", "HEAD"], REPO)
    dirty = _cmd(["git", "status", "--porcelain", "--untracked-files=no"],
                 REPO)
    return head + (" (with uncommitted changes)" if dirty else "")


def versions():
    try:
        import twisted
        tw = twisted.__version__
    except ImportError:
        tw = "?"
    fio = _cmd(["fio", "--version"])
    nbdkit = _cmd(["nbdkit", "--version"]).split("\n")[0]
    return {"python": platform.python_version(), "twisted": tw,
            "fio": fio or "-", "nbdkit": nbdkit or "-"}


def build():
    """xdiskd/compiled.py's line for this tree (XDISKD_PURE as set)."""
    return _cmd([sys.executable, "-c", "from xdiskd.compiled import "
                 "describe; print(describe())"], cwd=REPO) or "?"


def describe(files=(), sample=1.0):
    """
    Markdown lines describing the machine now (call at the start of a
    run, before the daemons start: the CPU sample takes C{sample}
    seconds).
    """
    load = _read("/proc/loadavg").split()[:3]
    cpu = cpuSample(sample)
    mem = meminfo()
    v = versions()
    lines = [
        "- machine: %s; %d CPUs (nproc), %d online; kernel %s" % (
            cpuModel(), len(os.sched_getaffinity(0)), os.cpu_count() or 0,
            platform.release()),
        "- idle: %s" % (idleState(),),
        "- at start: load average %s; over %.0f s: %s" % (
            " ".join(load) or "?", sample,
            "steal %.1f%%, idle %.1f%%" % cpu if cpu else "?"),
        "- memory: %s MiB total, %s MiB available, dirty %s MiB, "
        "writeback %s MiB" % tuple(mem.get(k, "?") for k in (
            "MemTotal", "MemAvailable", "Dirty", "Writeback")),
        "- versions: Python %s, Twisted %s, %s, %s" % (
            v["python"], v["twisted"], v["fio"], v["nbdkit"]),
        "- build of this tree's hot modules: %s" % (build(),),
        "- commit: %s; command: `%s`" % (
            gitCommit(), " ".join([os.path.relpath(sys.argv[0], REPO)]
                                  + sys.argv[1:])),
    ]
    for f in files:
        r = residency(f)
        lines.append("- %s: %s in page cache" % (
            os.path.basename(f), "?" if r is None else "%.0f%%" % r))
    return lines
