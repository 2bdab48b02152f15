#!/usr/bin/env python3
"""Report of a bench/run.sh run: Markdown tables of medians and charts.

Usage: bench/report.py [--no-charts] [--reference NAME] [--quiet] [CSV]

CSV is the file bench/run.sh wrote (default bench/results/latest.csv); its
latest.meta beside it adds the workloads' descriptions, the allocators'
libraries and what was skipped (without it the report still works, with
less detail). Writes, next to the CSV: latest.md (also printed on stdout
unless --quiet), time.dat and memory.dat (the charts' data) and, with
gnuplot, time.png/time.svg and memory.png/memory.svg drawn by
bench/plot.gp.

Every ratio in the report is a cost relative to the reference allocator
(mimalloc, else glibc): above 1 is worse than the reference (slower,
bigger), below 1 better.

Exit status: 0; 3 when one workload's checksum differs between runs (an
allocator lost or corrupted data); 1 for an unreadable CSV; 2 for a usage
error. Missing gnuplot is not an error: the charts are skipped with a line
that says so.

Python 3 standard library only.
"""

import argparse
import csv
import datetime
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# flag a row when BrainMM's median is worse than this times the best other
# allocator's, and the difference is larger than the floor (noise, rounding)
FLAG_RATIO = 1.25
FLOOR = {"wall_s": 0.005, "cpu_s": 0.02, "maxrss_kb": 2048.0,
         "seconds": 0.005, "rss_mb": 2.0, "rss_kb": 2048.0, "peak_rss_kb": 2048.0}
KNOWN_PACKAGES = {
    "glibc": "libc6",
    "mimalloc": "libmimalloc2.0",
    "jemalloc": "libjemalloc2",
    "tcmalloc": "libtcmalloc-minimal4",
}
TIME_KINDS = ("time", "replay")
# BrainMM's rivals for the "worse than 1.25x the best peer" line; glibc is
# the baseline, not a peer (it still counts when no peer was measured)
PEERS = ("mimalloc", "jemalloc", "tcmalloc")


def higher_is_better(metric):
    """mops and other throughputs; every other measure is a cost."""
    m = metric.lower()
    return m.startswith("mops") or "per_s" in m or "throughput" in m


def fnum(x):
    """A number with 3 significant digits or so, without exponent."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01 or a == 0:
        return f"{x:.3f}"
    return f"{x:.2g}"


def fratio(r):
    if r is None:
        return "–"
    return f"{r:.2f}×" if r < 9.995 else f"{r:.1f}×"


def run(cmd, cwd=None):
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    if not xs:
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def parse_result(text):
    kv = {}
    for tok in (text or "").split():
        k, sep, v = tok.partition("=")
        if sep and k:
            kv[k] = v
    return kv


def to_float(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


# --------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------

class Data:
    def __init__(self):
        self.workloads = []   # ids, in the table's order
        self.kind = {}        # id -> time | mem | replay
        self.metric = {}      # id -> name of the workload's own measure
        self.command = {}     # id -> command line
        self.desc = {}        # id -> description
        self.allocators = []  # names, in run order
        self.alloc_lib = {}   # name -> library path (or "none")
        self.alloc_pkg = {}   # name -> Debian package
        self.skipped = []
        self.meta = {}
        # (workload, allocator) -> {"wall_s": [...], "cpu_s": [...], ...}
        self.samples = {}
        self.failed = {}      # (workload, allocator) -> [status, ...]
        self.checksums = {}   # workload -> {checksum: {allocators}}
        self.repeats_seen = 0


def read_meta(path, d):
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            key = parts[0]
            if key == "workload" and len(parts) >= 6:
                wid = parts[1]
                d.workloads.append(wid)
                d.kind[wid], d.metric[wid], d.command[wid], d.desc[wid] = parts[2:6]
            elif key == "allocator" and len(parts) >= 3:
                d.allocators.append(parts[1])
                d.alloc_lib[parts[1]] = parts[2]
                if len(parts) > 3 and parts[3]:
                    d.alloc_pkg[parts[1]] = parts[3]
            elif key == "skipped" and len(parts) >= 2:
                d.skipped.append("\t".join(parts[1:]))
            elif len(parts) >= 2:
                d.meta[key] = "\t".join(parts[1:])
    return True


def read_csv(path, d):
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        need = {"workload", "allocator", "repeat", "wall_s", "cpu_s", "maxrss_kb", "metric", "value"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns {', '.join(sorted(need))}")
        for r in reader:
            w, a = r["workload"], r["allocator"]
            if w not in d.kind:
                d.workloads.append(w)
                d.kind[w] = r.get("kind") or "time"
                d.metric[w] = r["metric"]
            if a not in d.allocators:
                d.allocators.append(a)
            try:
                d.repeats_seen = max(d.repeats_seen, int(r["repeat"]))
            except ValueError:
                pass
            status = r.get("status") or ("ok" if r["value"] not in ("", "NA") else "failed")
            if status != "ok":
                d.failed.setdefault((w, a), []).append(status)
                continue
            if r["metric"]:  # the measure the run really reported
                d.metric[w] = r["metric"]
            s = d.samples.setdefault((w, a), {})
            for col in ("wall_s", "cpu_s", "maxrss_kb", "value"):
                v = to_float(r[col])
                if v is not None:
                    s.setdefault(col, []).append(v)
            kv = parse_result(r.get("result"))
            for k, v in kv.items():
                fv = to_float(v)
                if fv is not None:
                    s.setdefault("result:" + k, []).append(fv)
            if "checksum" in kv:
                d.checksums.setdefault(w, {}).setdefault(kv["checksum"], set()).add(a)


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------

class Stats:
    def __init__(self, d, reference):
        self.d = d
        self.ref = reference

    def med(self, w, a, col):
        v = self.d.samples.get((w, a), {}).get(col)
        return statistics.median(v) if v else None

    def cost(self, w, a, col):
        """a's median relative to the reference's, as a cost (>1 worse)."""
        x, y = self.med(w, a, col), self.med(w, self.ref, col)
        if x is None or y is None or x <= 0 or y <= 0:
            return None
        if col == "value" and higher_is_better(self.d.metric.get(w, "")):
            return y / x
        return x / y

    def best_other(self, w, a, col, among=None):
        """(name, median) of the best allocator other than a (of `among`)."""
        hib = col == "value" and higher_is_better(self.d.metric.get(w, ""))
        best = None
        for o in self.d.allocators:
            if o == a or (among is not None and o not in among):
                continue
            m = self.med(w, o, col)
            if m is None or m <= 0:
                continue
            if best is None or (m > best[1] if hib else m < best[1]):
                best = (o, m)
        return best

    def is_best(self, w, a, col):
        m = self.med(w, a, col)
        if m is None:
            return False
        b = self.best_other(w, a, col)
        if b is None:
            return False
        hib = col == "value" and higher_is_better(self.d.metric.get(w, ""))
        return m >= b[1] if hib else m <= b[1]

    def spread(self, w, a, col):
        v = self.d.samples.get((w, a), {}).get(col)
        if not v or len(v) < 2:
            return None
        m = statistics.median(v)
        return (max(v) - min(v)) / m if m > 0 else None


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------

def machine_lines(d):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or "unknown CPU"
    nproc = run(["nproc"]) or str(os.cpu_count() or "?")
    online = os.cpu_count() or "?"
    git = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "revision unknown"
    if run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]):
        git += " (+ local changes)"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- **date**: {date}",
        f"- **machine**: {cpu}; {nproc} CPUs available (nproc), {online} online; "
        f"{platform.machine()}; kernel {platform.release()}",
        f"- **BrainMM**: git {git}",
    ]


def allocator_line(d):
    parts = []
    for a in d.allocators:
        pkg = d.alloc_pkg.get(a) or KNOWN_PACKAGES.get(a, "")
        ver = run(["dpkg-query", "-W", "-f=${Version}", pkg]) if pkg else ""
        lib = d.alloc_lib.get(a, "")
        bits = []
        if pkg:
            bits.append(f"{pkg} {ver or '(version ?)'}")
        if lib and lib != "none":
            bits.append(f"`{lib}`")
        elif a == "glibc":
            bits.append("no preload")
        parts.append(f"**{a}**" + (f" ({', '.join(bits)})" if bits else ""))
    return "- **allocators**: " + "; ".join(parts)


def table(head, rows, align=None):
    align = align or (["---"] + ["---:"] * (len(head) - 1))
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def cell(st, w, a, col, scale=1.0, ratio=True):
    d = st.d
    m = st.med(w, a, col)
    nfail = len(d.failed.get((w, a), []))
    if m is None:
        return "FAIL" if nfail else "–"
    s = fnum(m * scale)
    if ratio and a != st.ref:
        r = st.cost(w, a, col)
        if r is not None:
            s += f" ({fratio(r)})"
    if len(d.allocators) > 1 and st.is_best(w, a, col):
        s = f"**{s}**"
    if nfail:
        s += f" ({nfail} failed)"
    return s


def flagged(st, who="brainmm"):
    """Where `who` is worse than FLAG_RATIO x the best peer: a list of
    (workload, "time" or "memory", measure, who's median, peer, peer's
    median, ratio, unit), or None when `who` was not measured."""
    d = st.d
    if who not in d.allocators:
        return None
    peers = [a for a in d.allocators if a in PEERS] or [a for a in d.allocators if a != who]
    out = []
    for w in d.workloads:
        timed = d.kind.get(w) in TIME_KINDS
        cols = (["wall_s"] if timed else []) + ["value", "maxrss_kb"]
        for col in cols:
            m = st.med(w, who, col)
            b = st.best_other(w, who, col, peers)
            if m is None or b is None or m <= 0:
                continue
            metric = d.metric.get(w, "")
            hib = col == "value" and higher_is_better(metric)
            r = b[1] / m if hib else m / b[1]
            floor = FLOOR.get(col if col != "value" else metric, 0.0)
            if r <= FLAG_RATIO or abs(m - b[1]) <= floor:
                continue
            if col == "maxrss_kb":
                out.append((w, "memory", "peak RSS", m * 1024 / 1e6, b[0], b[1] * 1024 / 1e6, r, "MB"))
            elif col == "wall_s":
                out.append((w, "time", "wall time", m, b[0], b[1], r, "s"))
            else:
                out.append((w, "time" if timed else "memory", metric, m, b[0], b[1], r, ""))
    return out


def write_markdown(d, st, md_path, csv_path, charts):
    ref = st.ref
    allocs = d.allocators
    time_rows = [w for w in d.workloads if d.kind.get(w) in TIME_KINDS]
    mem_rows = [w for w in d.workloads if d.kind.get(w) == "mem"]
    replay_rows = [w for w in d.workloads if d.kind.get(w) == "replay"]
    M = d.meta
    out = ["# BrainMM benchmark: workloads × allocators", ""]
    out += machine_lines(d)
    out.append(allocator_line(d))
    repeats = M.get("repeats") or str(d.repeats_seen)
    quick = M.get("quick", "0") not in ("", "0")
    how = (f"- **method**: {repeats} repeat{'' if repeats == '1' else 's'}"
           f"{' (QUICK: short arguments)' if quick else ''}, interleaved (repeat → workload → "
           "allocator, the first allocator rotating each repeat); every number is the median "
           "of the repeats")
    if "elapsed_s" in M:
        s = int(M["elapsed_s"] or 0)
        how += f"; the runs took {s // 60}:{s % 60:02d}"
    out.append(how)
    if "measure" in M:
        out.append(f"- **measured**: {M['measure']}")
    if "workloads_file" in M:
        out.append(f"- **rows**: `{M['workloads_file']}`" +
                   (f", programs from `{M['build_dir']}`" if "build_dir" in M else ""))
    for s in d.skipped:
        out.append(f"- skipped {s}")
    nfail = sum(len(v) for v in d.failed.values())
    if nfail:
        what = ", ".join(f"{w}/{a}: {', '.join(sorted(set(v)))}" for (w, a), v in sorted(d.failed.items()))
        out.append(f"- **{nfail} run(s) failed** ({what}); see latest.log")
    mismatch = {w: c for w, c in d.checksums.items() if len(c) > 1}
    for w, c in sorted(mismatch.items()):
        detail = "; ".join(f"{k} from {', '.join(sorted(v))}" for k, v in c.items())
        out.append(f"- **checksum mismatch in {w}** (an allocator lost or corrupted data): {detail}")
    out.append("")
    out.append(f"Every ratio below is a **cost relative to {ref}**: above 1 is worse than {ref} "
               "(slower, bigger), below 1 better; for a throughput it is "
               f"{ref}'s throughput divided by this one's. **Bold**: the best of the row. "
               "On a shared machine, differences smaller than the spread (last table) are noise.")
    out.append("")

    # ---- summary ----
    out.append("## Summary")
    out.append("")
    out.append(f"Geometric means over the rows of each allocator's cost relative to {ref} "
               "(number of rows in brackets):")
    out.append("")
    head = ["allocator", "wall time (time rows)", "own time measure (time rows)",
            "peak RSS (all rows)", "RSS measured by mem rows"]
    rows = []
    for a in allocs:
        r = [f"**{a}**" if a == "brainmm" else a]
        for ws, col in ((time_rows, "wall_s"), (time_rows, "value"),
                        (d.workloads, "maxrss_kb"), (mem_rows, "value")):
            xs = [st.cost(w, a, col) for w in ws]
            xs = [x for x in xs if x is not None]
            if a == ref:
                r.append("1 (reference)" if xs else "–")
            else:
                g = geomean(xs)
                r.append(f"{fratio(g)} ({len(xs)})" if g is not None else "–")
        rows.append(r)
    out += table(head, rows)
    out.append("")
    fl = flagged(st)
    if fl is None:
        out.append("BrainMM was not measured.")
    elif fl:
        names = []
        for w in dict.fromkeys(f[0] for f in fl):
            cats = sorted({f[1] for f in fl if f[0] == w}, reverse=True)
            names.append(f"**{w}** ({', '.join(cats)})")
        out.append(f"**BrainMM worse than {FLAG_RATIO}× the best peer**: " + ", ".join(names) + ".")
        out.append("")
        rows = [[w, f"{measure} ({cat})", f"{fnum(m)} {unit}".strip(), f"{fnum(bv)} {unit}".strip(),
                 peer, fratio(r)] for w, cat, measure, m, peer, bv, r, unit in fl]
        out += table(["workload", "measure", "brainmm", "best peer", "peer", "brainmm's cost"], rows,
                     ["---", "---", "---:", "---:", "---", "---:"])
    else:
        out.append(f"BrainMM is nowhere worse than {FLAG_RATIO}× the best peer.")
    out.append("")
    out.append(f"(Peers: {', '.join(PEERS)}, where measured; glibc is the baseline, not a peer. "
               "Checked: the medians of wall time, peak RSS and each row's own measure; "
               f"differences under {FLOOR['wall_s'] * 1000:.0f} ms or 2 MiB are not listed.)")
    out.append("")

    # ---- time ----
    if time_rows:
        out.append("## Time")
        out.append("")
        out.append("Median wall time of the whole process, seconds (lower is better); "
                   f"in brackets, relative to {ref}.")
        out.append("")
        rows = [[w] + [cell(st, w, a, "wall_s") for a in allocs] for w in time_rows]
        out += table(["workload"] + allocs, rows)
        out.append("")

    # ---- own measures ----
    out.append("## Workloads' own measures")
    out.append("")
    out.append("The value each program reports on its RESULT line: `mops` is million "
               "malloc+free pairs per second (↑ higher is better), `rss_mb` the RSS in MB "
               "(10^6 B) that a mem row needs to hold 100 MB of live objects (↓, 100 is "
               "ideal), `seconds` the program's own timing (↓).")
    out.append("")
    rows = []
    for w in d.workloads:
        metric = d.metric.get(w, "?")
        arrow = "↑" if higher_is_better(metric) else "↓"
        rows.append([w, f"{metric} {arrow}"] + [cell(st, w, a, "value") for a in allocs])
    out += table(["workload", "measure"] + allocs, rows, ["---", "---"] + ["---:"] * len(allocs))
    out.append("")

    # ---- memory ----
    out.append("## Memory")
    out.append("")
    out.append("Median peak RSS of the process (maxrss), MB = 10^6 bytes (lower is better); "
               f"in brackets, relative to {ref}. For mem rows this includes the program's "
               "own pointer array, so the table above measures the allocator more closely.")
    out.append("")
    if any(st.med(w, a, "maxrss_kb") is not None for w in d.workloads for a in allocs):
        rows = [[w, d.kind.get(w, "")] + [cell(st, w, a, "maxrss_kb", 1024 / 1e6) for a in allocs]
                for w in d.workloads]
        out += table(["workload", "kind"] + allocs, rows, ["---", "---"] + ["---:"] * len(allocs))
    else:
        out.append("(not measured: GNU time was missing)")
    out.append("")

    # ---- replays ----
    if replay_rows:
        fields = []
        for k in ("seconds", "peak_rss_kb", "fragmentation"):
            if any(st.med(w, a, "result:" + k) is not None for w in replay_rows for a in allocs):
                fields.append(k)
        if fields:
            out.append("## Trace replays")
            out.append("")
            out.append("From bmm-replay's RESULT line: its own `seconds` of replay, its "
                       "`peak_rss_kb` (shown in MB) and `fragmentation` as bmm-replay defines "
                       "them; lower is better for all three.")
            out.append("")
            rows = []
            for w in replay_rows:
                for k in fields:
                    scale = 1024 / 1e6 if k == "peak_rss_kb" else 1.0
                    rows.append([w, "peak RSS MB" if k == "peak_rss_kb" else k] +
                                [cell(st, w, a, "result:" + k, scale) for a in allocs])
            out += table(["trace", "measure"] + allocs, rows, ["---", "---"] + ["---:"] * len(allocs))
            out.append("")

    # ---- cpu ----
    if time_rows:
        out.append("## CPU time")
        out.append("")
        out.append("Median user + system CPU seconds (10 ms resolution); above the wall time "
                   "when several threads run, and spinning or lock contention shows here.")
        out.append("")
        rows = [[w] + [cell(st, w, a, "cpu_s") for a in allocs] for w in time_rows]
        out += table(["workload"] + allocs, rows)
        out.append("")

    # ---- spread ----
    out.append("## Spread")
    out.append("")
    out.append("(max − min) / median of each cell's repeats: wall time for time rows, the "
               "program's own measure for mem rows. Differences between allocators smaller "
               "than this are noise; run again with more REPEATS or on a quieter machine.")
    out.append("")
    rows = []
    for w in d.workloads:
        col = "wall_s" if d.kind.get(w) in TIME_KINDS else "value"
        r = [w]
        for a in allocs:
            s = st.spread(w, a, col)
            r.append(f"{s * 100:.0f}%" if s is not None else "–")
        rows.append(r)
    out += table(["workload"] + allocs, rows)
    out.append("")

    # ---- charts and workloads ----
    if charts is not None:
        out.append("## Charts")
        out.append("")
        for name, title in charts:
            out.append(f"![{title}]({name}.svg)")
            out.append("")
        if not charts:
            out.append("(none drawn: see the message of bench/report.py; the data are in "
                       "time.dat and memory.dat)")
            out.append("")
    if any(d.command.get(w) or d.desc.get(w) for w in d.workloads):
        out.append("## Workloads")
        out.append("")
        rows = [[f"`{w}`", d.kind.get(w, ""), f"`{d.command.get(w, '')}`",
                 d.desc.get(w, "").replace("|", "\\|")] for w in d.workloads]
        out += table(["id", "kind", "command", "description"], rows, ["---"] * 4)
        out.append("")
    out.append(f"Data: `{os.path.basename(csv_path)}` (one row per run).")
    text = "\n".join(out) + "\n"
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(text)
    return text, bool(mismatch)


# --------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------

def find_gnuplot():
    g = shutil.which("gnuplot")
    if g:
        return g, ""
    if (os.environ.get("NO_INSTALL", "0") != "1" and hasattr(os, "geteuid")
            and os.geteuid() == 0 and shutil.which("apt-get")):
        print("installing gnuplot-nox ...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
               "-o", "DPkg::Lock::Timeout=300", "gnuplot-nox"]
        for attempt in range(2):
            try:
                ok = subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok or attempt:
                break
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        g = shutil.which("gnuplot")
        if g:
            return g, ""
        return None, "gnuplot not found and apt-get install gnuplot-nox failed"
    return None, "gnuplot not found (install the Debian package gnuplot-nox)"


def write_charts(d, st, outdir):
    """Writes the .dat files and draws the charts; returns [(name, title)]."""
    ref = st.ref
    bars = [a for a in d.allocators if a != ref]
    specs = [
        ("time", [w for w in d.workloads if d.kind.get(w) in TIME_KINDS], "wall_s",
         f"Wall time relative to {ref} (log scale; lower is better)", f"time / {ref}'s time"),
        ("memory", list(d.workloads), "maxrss_kb",
         f"Peak RSS relative to {ref} (log scale; lower is better)", f"peak RSS / {ref}'s"),
    ]
    for name, *_ in specs:  # never leave charts of an older run behind
        for ext in ("png", "svg", "dat"):
            p = os.path.join(outdir, f"{name}.{ext}")
            if os.path.exists(p):
                os.remove(p)
    todo = []
    for name, rows, col, title, ylabel in specs:
        vals = {(w, a): st.cost(w, a, col) for w in rows for a in bars}
        rows = [w for w in rows if any(vals[(w, a)] is not None for a in bars)]
        if not rows or not bars:
            continue
        dat = os.path.join(outdir, f"{name}.dat")
        with open(dat, "w") as f:
            f.write("# " + title + "\n")
            f.write("workload " + " ".join(bars) + "\n")
            for w in rows:
                f.write(w + " " + " ".join(f"{vals[(w, a)]:.4f}" if vals[(w, a)] is not None else "?"
                                          for a in bars) + "\n")
        xs = [v for v in vals.values() if v is not None]
        lo, hi = min(xs + [1.0]), max(xs + [1.0])
        # powers of 2 around the data, at least 0.5 .. 2
        ymin = 2.0 ** math.floor(math.log2(min(lo, 0.5)) - 0.01)
        ymax = 2.0 ** math.ceil(math.log2(max(hi, 2.0)) + 0.01)
        todo.append((name, title, ylabel, dat, rows, ymin, ymax))
    if not todo:
        return []
    gnuplot, why = find_gnuplot()
    if not gnuplot:
        print(f"charts skipped: {why}", file=sys.stderr)
        return []
    script = os.path.join(HERE, "plot.gp")
    done = []
    for name, title, ylabel, dat, rows, ymin, ymax in todo:
        width = max(800, min(1600, 160 + len(rows) * (20 + 12 * len(bars))))
        # room for the longest label, written at -35 degrees
        bmargin = 1 + math.ceil(0.28 * max(len(w) for w in rows))
        q = lambda s: "'" + s.replace("'", "''") + "'"  # gnuplot single-quoted string
        defs = (f"datafile={q(dat)}; outbase={q(os.path.join(outdir, name))}; "
                f"charttitle={q(title)}; ylabel_text={q(ylabel)}; refname={q(ref)}; "
                f"nbars={len(bars)}; width={width}; height={560 + 8 * bmargin}; "
                f"ymin={ymin}; ymax={ymax}; bmargin={bmargin}")
        try:
            p = subprocess.run([gnuplot, "-e", defs, script], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            print(f"chart {name} failed: {e}", file=sys.stderr)
            continue
        ok = p.returncode == 0 and all(os.path.exists(os.path.join(outdir, f"{name}.{x}")) for x in ("png", "svg"))
        if not ok:
            print(f"chart {name} failed (gnuplot exit status {p.returncode}):", file=sys.stderr)
            for line in (p.stderr or "").strip().splitlines()[-8:]:
                print("    " + line, file=sys.stderr)
            continue
        done.append((name, title))
    return done


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="Markdown report and charts of a bench/run.sh run.")
    ap.add_argument("csv", nargs="?", default=os.path.join(HERE, "results", "latest.csv"))
    ap.add_argument("--no-charts", action="store_true", help="do not draw charts")
    ap.add_argument("--reference", help="allocator the ratios are relative to (default mimalloc, else glibc)")
    ap.add_argument("--quiet", action="store_true", help="do not print the report on stdout")
    args = ap.parse_args()

    d = Data()
    base, _ = os.path.splitext(args.csv)
    outdir = os.path.dirname(os.path.abspath(args.csv))
    read_meta(base + ".meta", d)
    try:
        read_csv(args.csv, d)
    except (OSError, ValueError, csv.Error) as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 1
    if not d.allocators:
        print(f"report.py: no runs in {args.csv}", file=sys.stderr)
        return 1

    measured = [a for a in d.allocators if any((w, a) in d.samples for w in d.workloads)]
    if args.reference:
        if args.reference not in d.allocators:
            print(f"report.py: no allocator '{args.reference}' in {args.csv}", file=sys.stderr)
            return 2
        ref = args.reference
    else:
        ref = next((a for a in ("mimalloc", "glibc") if a in measured), measured[0] if measured else d.allocators[0])
    st = Stats(d, ref)

    charts = None if args.no_charts else write_charts(d, st, outdir)
    text, mismatch = write_markdown(d, st, base + ".md", args.csv, charts)
    if not args.quiet:
        sys.stdout.write(text)
    return 3 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
