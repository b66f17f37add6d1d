#!/usr/bin/env python3
"""Turn benches/run.sh's results file into the markdown table of `make bench`.

Each input line: `SUT TAG key=value ...` (the generator's RESULT lines). Every figure is the
median over the runs; ratios are dialbackd / Prosody from the same run of `make bench`.
"""
import statistics
import sys
import time
import platform

# Anchors from the issue (independent S2S load tool, this machine class, server on one core).
ANCHOR = {
    "prosody": {"hs": 270, "ping": 9200, "msgs": 5700, "kib": 65},
    "ejabberd": {"hs": 450, "ping": 24000, "msgs": 25000, "kib": 45},
}


def load(path):
    rows = {}
    for line in open(path):
        parts = line.split()
        if len(parts) < 3:
            continue
        sut, tag = parts[0], parts[1]
        kv = {}
        for p in parts[3:]:
            if "=" in p:
                k, v = p.split("=", 1)
                try:
                    kv[k] = float(v)
                except ValueError:
                    pass
        rows.setdefault((sut, tag), []).append(kv)
    return rows


def med(rows, sut, tag, key):
    vals = [r[key] for r in rows.get((sut, tag), []) if key in r and r[key] == r[key]]
    return statistics.median(vals) if vals else None


def runs(rows, sut, tag):
    return len(rows.get((sut, tag), []))


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def main():
    rows = load(sys.argv[1])
    reps = sys.argv[2] if len(sys.argv) > 2 else "?"
    out = []
    verdicts = []

    def row(name, key_tag, key, unit, target_desc, target_ok, higher_better=True):
        tag = key_tag
        d = med(rows, "dialbackd", tag, key)
        p = med(rows, "prosody", tag, key)
        ok = None
        if target_ok is not None and d is not None:
            ok = target_ok(d, p)
        mark = "" if ok is None else (" ✅" if ok else " ❌")
        out.append(f"| {name} | {fmt(d, unit)} | {fmt(p, unit)} | {ratio(d, p)} | {target_desc}{mark} |")
        if ok is not None:
            verdicts.append((name, ok))
        return d, p

    def twice_best(anchor_key):
        best_anchor = max(ANCHOR["prosody"][anchor_key], ANCHOR["ejabberd"][anchor_key])
        return (f"≥ 2× max(Prosody here, ejabberd anchor {best_anchor:,}) ",
                lambda d, p: p is not None and d >= 2 * max(p, best_anchor))

    out.append(f"Medians of {reps} runs; ratio = dialbackd ÷ Prosody (same run, same machine, "
               f"each server pinned to one core). Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    out.append("")
    out.append("| Workload | dialbackd | Prosody 0.12 | ratio | target |")
    out.append("|---|---:|---:|---:|---|")
    t, ok = twice_best("msgs")
    d200, _ = row("1. one stream, 200 B bodies: msgs/s", "tput200", "msgs_per_s", "", t, ok)
    row("1. one stream, 200 B bodies: MB/s", "tput200", "mb_per_s", "", "≥ 2× Prosody",
        lambda d, p: p is not None and d >= 2 * p)
    row("1. one stream, 4 KiB bodies: msgs/s", "tput4k", "msgs_per_s", "", "≥ 2× Prosody",
        lambda d, p: p is not None and d >= 2 * p)
    row("1. one stream, 4 KiB bodies: MB/s", "tput4k", "mb_per_s", "", "≥ 2× Prosody",
        lambda d, p: p is not None and d >= 2 * p)
    row("1. latency p50 at 2,000 msg/s (ms, lower is better)", "latency", "p50_ms", "", "—", None)
    row("1. latency p99 at 2,000 msg/s (ms, lower is better)", "latency", "p99_ms", "", "—", None)
    t, ok = twice_best("ping")
    row("XEP-0199 ping round trips/s, 500 outstanding", "ping", "rtt_per_s", "", t, ok)
    t, ok = twice_best("hs")
    conc = med(rows, "dialbackd", "handshake", "concurrency") or med(rows, "prosody", "handshake", "concurrency")
    conc = f"{conc:.0f}" if conc else "?"
    row(f"2. dialback handshakes/s ({conc} concurrent, distinct domains)", "handshake", "hs_per_s", "", t, ok)
    row("2. time to valid p50 (ms)", "handshake", "p50_ms", "", "—", None)
    row("2. time to valid p99 (ms)", "handshake", "p99_ms", "", "—", None)
    row("3. RSS, 0 streams (KiB)", "memory", "rss0_kib", "", "—", None)
    steps = sorted({int(k[1:].split("_")[0])
                    for r in rows.get(("dialbackd", "memory"), []) + rows.get(("prosody", "memory"), [])
                    for k in r if k.startswith("n") and k.endswith("_kib_per_stream")})
    for n in steps:
        row(f"3. RSS, {n} idle verified streams (KiB)", "memory", f"n{n}_rss_kib", "", "—", None)
        row(f"3. KiB per idle verified stream (at {n})", "memory", f"n{n}_kib_per_stream", "",
            "≤ 20 KiB", lambda d, p: d <= 20)
    b = med(rows, "dialbackd", "binary", "bytes")
    out.append(f"| 4. stripped release binary | {fmt(b / 1024 if b else None, ' KiB')} | — | — | — |")
    row("4. cold start to listening (ms)", "start", "ms", "", "—", None)
    xml_rate = med(rows, "xml", "parse", "xml_msgs_per_s")
    sr_rate = med(rows, "xml", "parse", "streamreader_msgs_per_s")
    out.append(f"| raw parse, `xml` crate EventReader, 200 B msgs/s (MB/s) | — | — | — | "
               f"{fmt(xml_rate)} ({fmt(med(rows, 'xml', 'parse', 'xml_mb_per_s'))} MB/s) |")
    out.append(f"| raw parse, dialbackd StreamReader, 200 B msgs/s (MB/s) | — | — | — | "
               f"{fmt(sr_rate)} ({fmt(med(rows, 'xml', 'parse', 'streamreader_mb_per_s'))} MB/s) |")
    # Pair each end-to-end run with the parse run made just before it on the same core.
    e2e = [r.get("msgs_per_s") for r in rows.get(("dialbackd", "tput200"), [])]
    raw = [r.get("xml_msgs_per_s") for r in rows.get(("xml", "parse"), [])]
    pairs = [a / b for a, b in zip(e2e, raw) if a and b and a == a]
    if pairs and len(e2e) == len(raw):
        share = statistics.median(pairs)
    elif d200 is not None and xml_rate:
        share = d200 / xml_rate
    else:
        share = None
    if share is not None:
        okp = share >= 0.40
        verdicts.append(("end-to-end ≥ 40% of raw xml parse rate", okp))
        out.append(f"| end-to-end 200 B msgs/s ÷ raw `xml` parse rate (median of per-run ratios) | {share * 100:.0f}% | — | — | "
                   f"≥ 40%{' ✅' if okp else ' ❌'} |")
    out.append("")
    # Generator checks.
    g200 = med(rows, "gen", "selftest200", "msgs_per_s")
    g4k = med(rows, "gen", "selftest4k", "msgs_per_s")
    gcpu = {}
    for tag in ("tput200", "tput4k", "ping", "handshake"):
        for sut in ("dialbackd", "prosody"):
            gcpu[(tag, sut)] = (med(rows, sut, tag, "gen_cpu"), med(rows, sut, tag, "sut_cpu"))
    out.append(f"Generator alone (sender + sink scanner over loopback, one core): "
               f"{fmt(g200)} msgs/s at 200 B, {fmt(g4k)} msgs/s at 4 KiB.")
    out.append("")
    out.append("| CPU % of one core during | gen (vs dialbackd) | dialbackd | gen (vs Prosody) | Prosody |")
    out.append("|---|---:|---:|---:|---:|")
    for tag in ("tput200", "tput4k", "ping", "handshake"):
        gd, sd = gcpu[(tag, "dialbackd")]
        gp, sp = gcpu[(tag, "prosody")]
        out.append(f"| {tag} | {fmt(gd)} | {fmt(sd)} | {fmt(gp)} | {fmt(sp)} |")
    out.append("")
    # Losses and failures (must be zero for the figures to mean anything).
    problems = []
    for (sut, tag), rs in sorted(rows.items()):
        for r in rs:
            if tag.startswith("tput") and r.get("received", 0) < r.get("n", 0):
                problems.append(f"{sut} {tag}: received {r.get('received'):.0f}/{r.get('n'):.0f}"
                                f", bounced {r.get('bounced', 0):.0f}")
            if tag == "latency" and r.get("received", 0) < r.get("sent", 0):
                problems.append(f"{sut} latency: received {r.get('received'):.0f}/{r.get('sent'):.0f}")
            if tag == "ping" and r.get("replies", 0) < r.get("n", 0):
                problems.append(f"{sut} ping: {r.get('replies'):.0f}/{r.get('n'):.0f} replies")
            if tag == "ping" and r.get("errors", 0) > 0:
                problems.append(f"{sut} ping: {r.get('errors'):.0f} iq errors")
            if tag == "handshake" and r.get("failed", 0) > 0:
                problems.append(f"{sut} handshake: {r.get('failed'):.0f} failed")
            if tag == "memory":
                for k, v in r.items():
                    if k.endswith("_failed") and v > 0:
                        problems.append(f"{sut} memory: {k}={v:.0f}")
    for sut in ("dialbackd", "prosody"):
        for tag in ("tput200", "tput4k", "latency", "ping", "handshake", "memory", "start"):
            if runs(rows, sut, tag) == 0:
                problems.append(f"{sut} {tag}: no result (failed run)")
    if problems:
        out.append("Problems in this run (figures above exclude nothing; read them with these in mind):")
        for p in problems:
            out.append(f"- {p}")
        out.append("")
    met = sum(1 for _, ok in verdicts if ok)
    out.append(f"Targets met: {met}/{len(verdicts)}" +
               ("" if met == len(verdicts) else
                " (missed: " + "; ".join(n for n, ok in verdicts if not ok) + ")"))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
