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


def mem_steps(rows, tag):
    """The stream counts of the memory workload `tag` (e.g. [100, 1000])."""
    return sorted({int(k[1:].split("_")[0])
                   for r in rows.get(("dialbackd", tag), []) + rows.get(("prosody", tag), [])
                   for k in r if k.startswith("n") and k.endswith("_kib_per_stream")})


def conc_of(rows, tag):
    c = med(rows, "dialbackd", tag, "concurrency") or med(rows, "prosody", tag, "concurrency")
    return f"{c:.0f}" if c else "?"


def tls_rows(rows, row, twice_prosody, one_thread):
    """Section 5: the same workloads with STARTTLS on both sides (benches/run.sh's TLS pass)."""
    row("5. TLS: one stream, 200 B bodies: msgs/s", "tls_tput200", "msgs_per_s", "", "≥ 2× Prosody",
        twice_prosody)
    row("5. TLS: XEP-0199 ping round trips/s, 500 outstanding", "tls_ping", "rtt_per_s", "",
        "≥ 2× Prosody", twice_prosody)
    conc = conc_of(rows, "tls_handshake")
    row(f"5. TLS: dialback handshakes/s ({conc} concurrent, distinct domains)", "tls_handshake",
        "hs_per_s", "", "≥ 2× Prosody", twice_prosody)
    row("5. TLS: TCP connect to valid p99 (ms, STARTTLS included)", "tls_handshake", "total_p99_ms", "",
        "—", None)
    steps = mem_steps(rows, "tls_memory")
    if not steps:
        return
    n = steps[-1]
    row("5. TLS: RSS, 0 streams (KiB)", "tls_memory", "rss0_kib", "", "—", None)
    row(f"5. TLS: RSS, {n} idle verified TLS streams (KiB)", "tls_memory", f"n{n}_rss_kib", "", "—", None)
    row(f"5. TLS: KiB per idle verified TLS stream (at {n})", "tls_memory", f"n{n}_kib_per_stream", "",
        "≤ 40 KiB", lambda d, p: d <= 40)
    row(f"5. TLS: threads per idle verified TLS stream (at {n})", "tls_memory", f"n{n}_threads_per_stream",
        "", "≤ 1", one_thread, show_ratio=False)


def main():
    rows = load(sys.argv[1])
    reps = sys.argv[2] if len(sys.argv) > 2 else "?"
    modes = (sys.argv[3] if len(sys.argv) > 3 else "plain tls").split()
    tls = "tls" in modes
    out = []
    verdicts = []

    def row(name, key_tag, key, unit, target_desc, target_ok, show_ratio=True):
        tag = key_tag
        d = med(rows, "dialbackd", tag, key)
        p = med(rows, "prosody", tag, key)
        ok = None
        if target_ok is not None and d is not None:
            ok = target_ok(d, p)
        mark = "" if ok is None else (" ✅" if ok else " ❌")
        r = ratio(d, p) if show_ratio else "—"
        out.append(f"| {name} | {fmt(d, unit)} | {fmt(p, unit)} | {r} | {target_desc}{mark} |")
        if ok is not None:
            verdicts.append((name, ok))
        return d, p

    def twice_prosody(d, p):
        return p is not None and d >= 2 * p

    def one_thread(d, p):
        return d <= 1.005  # (threads(n) - threads(0)) / n; 1.00 when rounded

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
    conc = conc_of(rows, "handshake")
    row(f"2. dialback handshakes/s ({conc} concurrent, distinct domains)", "handshake", "hs_per_s", "", t, ok)
    row("2. time to valid p50 (ms)", "handshake", "p50_ms", "", "—", None)
    row("2. time to valid p99 (ms)", "handshake", "p99_ms", "", "—", None)
    burst = conc_of(rows, "handshake_burst")
    row(f"2. dialback handshakes/s ({burst} in flight, distinct domains)", "handshake_burst", "hs_per_s", "",
        "≥ 2× Prosody", twice_prosody)
    row(f"2. {burst} in flight: time to valid p99 (ms)", "handshake_burst", "p99_ms", "", "—", None)
    row(f"2. {burst} in flight: TCP connect to valid p99 (ms)", "handshake_burst", "total_p99_ms", "",
        "< 500 ms", lambda d, p: d < 500)
    row("3. RSS, 0 streams (KiB)", "memory", "rss0_kib", "", "—", None)
    steps = mem_steps(rows, "memory")
    for n in steps:
        row(f"3. RSS, {n} idle verified streams (KiB)", "memory", f"n{n}_rss_kib", "", "—", None)
        # The target is per stream at the largest step (1,000 streams): smaller steps carry the
        # process's fixed costs (malloc arenas, caches) over fewer streams, and are shown only.
        if n == steps[-1]:
            row(f"3. KiB per idle verified stream (at {n})", "memory", f"n{n}_kib_per_stream", "",
                "≤ 20 KiB", lambda d, p: d <= 20)
        else:
            row(f"3. KiB per idle verified stream (at {n})", "memory", f"n{n}_kib_per_stream", "",
                "—", None)
    if steps:
        n = steps[-1]
        row(f"3. threads per idle verified stream (at {n})", "memory", f"n{n}_threads_per_stream", "",
            "≤ 1", one_thread, show_ratio=False)
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
        okp = share >= 0.65
        verdicts.append(("end-to-end ≥ 65% of raw xml parse rate", okp))
        out.append(f"| end-to-end 200 B msgs/s ÷ raw `xml` parse rate (median of per-run ratios) | {share * 100:.0f}% | — | — | "
                   f"≥ 65%{' ✅' if okp else ' ❌'} |")
    if tls:
        tls_rows(rows, row, twice_prosody, one_thread)
    out.append("")
    # Generator checks.
    g200 = med(rows, "gen", "selftest200", "msgs_per_s")
    g4k = med(rows, "gen", "selftest4k", "msgs_per_s")
    gcpu = {}
    cpu_tags = ["tput200", "tput4k", "ping", "handshake", "handshake_burst"]
    if tls:
        cpu_tags += ["tls_tput200", "tls_ping", "tls_handshake"]
    for tag in cpu_tags:
        for sut in ("dialbackd", "prosody"):
            gcpu[(tag, sut)] = (med(rows, sut, tag, "gen_cpu"), med(rows, sut, tag, "sut_cpu"))
    out.append(f"Generator alone (sender + sink scanner over loopback, one core): "
               f"{fmt(g200)} msgs/s at 200 B, {fmt(g4k)} msgs/s at 4 KiB.")
    out.append("")
    out.append("| CPU % of one core during | gen (vs dialbackd) | dialbackd | gen (vs Prosody) | Prosody |")
    out.append("|---|---:|---:|---:|---:|")
    for tag in cpu_tags:
        gd, sd = gcpu[(tag, "dialbackd")]
        gp, sp = gcpu[(tag, "prosody")]
        out.append(f"| {tag} | {fmt(gd)} | {fmt(sd)} | {fmt(gp)} | {fmt(sp)} |")
    out.append("")
    # Losses and failures (must be zero for the figures to mean anything).
    problems = []
    for (sut, tag), rs in sorted(rows.items()):
        for r in rs:
            if "tput" in tag and r.get("received", 0) < r.get("n", 0):
                problems.append(f"{sut} {tag}: received {r.get('received'):.0f}/{r.get('n'):.0f}"
                                f", bounced {r.get('bounced', 0):.0f}")
            if tag == "latency" and r.get("received", 0) < r.get("sent", 0):
                problems.append(f"{sut} latency: received {r.get('received'):.0f}/{r.get('sent'):.0f}")
            if tag.endswith("ping") and r.get("replies", 0) < r.get("n", 0):
                problems.append(f"{sut} {tag}: {r.get('replies'):.0f}/{r.get('n'):.0f} replies")
            if tag.endswith("ping") and r.get("errors", 0) > 0:
                problems.append(f"{sut} {tag}: {r.get('errors'):.0f} iq errors")
            if "handshake" in tag and r.get("failed", 0) > 0:
                problems.append(f"{sut} {tag}: {r.get('failed'):.0f} failed")
            if "handshake" in tag and r.get("bad_verifies", 0) > 0:
                problems.append(f"{sut} {tag}: {r.get('bad_verifies'):.0f} invalid keys")
            if tag.startswith("tls_") and r.get("gen_tls_in", 0) < r.get("gen_streams_in", 0):
                problems.append(f"{sut} {tag}: {r['gen_streams_in'] - r.get('gen_tls_in', 0):.0f} of "
                                f"{r['gen_streams_in']:.0f} streams to the generator were not encrypted")
            if tag.startswith("tls_") and r.get("tls", 1) != 1:
                problems.append(f"{sut} {tag}: the generator ran without --tls")
            if tag.endswith("memory"):
                for k, v in r.items():
                    if k.endswith("_failed") and v > 0:
                        problems.append(f"{sut} {tag}: {k}={v:.0f}")
    expected = ["tput200", "tput4k", "latency", "ping", "handshake", "handshake_burst", "memory", "start"]
    if tls:
        expected += ["tls_tput200", "tls_ping", "tls_handshake", "tls_memory"]
    for sut in ("dialbackd", "prosody"):
        for tag in expected:
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
