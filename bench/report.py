#!/usr/bin/env python3
"""Turns bench/out/{raw.jsonl,meta.json,half_load.jsonl,openssl_speed.txt}
into bench/out/results.json and bench/out/results.md (medians over rounds)."""

import argparse
import json
import os
import re
import statistics

ROW_ORDER = ["direct", "nginx", "haproxy", "scopegate"]
SCENARIO_ORDER = ["hot", "cold", "deny", "public"]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def openssl_verify_rates(path):
    """verify/s per core from `openssl speed` (rsa2048, ecdsap256, ed25519)."""
    rates = {}
    try:
        text = open(path).read()
    except OSError:
        return rates
    for line in text.splitlines():
        nums = re.findall(r"[\d.]+", line)
        if line.startswith("rsa 2048 bits") and len(nums) >= 4:
            rates["RS256"] = {"sign_s": float(nums[-2]), "verify_s": float(nums[-1])}
        elif "ecdsa (nistp256)" in line:
            rates["ES256"] = {"sign_s": float(nums[-2]), "verify_s": float(nums[-1])}
        elif "EdDSA (Ed25519)" in line:
            rates["EdDSA"] = {"sign_s": float(nums[-2]), "verify_s": float(nums[-1])}
    return rates


def cell_stats(records):
    """Medians over rounds of one (scenario, row)."""
    rps, p50, p99, cpu, ucpu, ok = [], [], [], [], [], True
    hits = sum(r.get("cache_hits", 0) for r in records)
    misses = sum(r.get("cache_misses", 0) for r in records)
    checks_per_cpu_s = []
    for r in records:
        if r.get("cache_misses") and r["cpu_ms"]:
            checks_per_cpu_s.append(r["cache_misses"] / (r["cpu_ms"] / 1000))
        w = r["wrk"]
        n = w["requests"]
        secs = w["duration_us"] / 1e6
        rps.append(n / secs if secs else 0)
        p50.append(w["latency_us"]["p50"] / 1000)
        p99.append(w["latency_us"]["p99"] / 1000)
        cpu.append(r["cpu_ms"] * 1000 / n if n else None)
        ucpu.append(r["upstream_cpu_ms"] * 1000 / n if n else None)
        e = w["errors"]
        socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
        expected_status_errors = n if (r["expect"] != 200 and r["row"] not in ("direct", "nginx")) else 0
        if socket_errors or e["status"] != expected_status_errors:
            ok = False
    out = {
        "rounds": len(records),
        "rps": median(rps),
        "p50_ms": median(p50),
        "p99_ms": median(p99),
        "cpu_ms_per_1k": median(cpu),
        "upstream_cpu_ms_per_1k": median(ucpu),
        "all_rounds_rps": [round(x) for x in rps],
        "statuses_as_expected": ok,
    }
    if hits + misses:
        out["cache_hit_ratio"] = hits / (hits + misses)
        out["signature_checks_per_cpu_s"] = median(checks_per_cpu_s)
    # Requests per CPU-second of the gateway: on the cold path this is the
    # number of signature checks one core sustains, all other work included.
    if out["cpu_ms_per_1k"]:
        out["requests_per_cpu_s"] = 1e6 / out["cpu_ms_per_1k"]
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, digits=0, suffix=""):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}{suffix}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = args.out
    meta = json.load(open(os.path.join(out, "meta.json")))
    raw = [json.loads(line) for line in open(os.path.join(out, "raw.jsonl")) if line.strip()]
    half = []
    half_path = os.path.join(out, "half_load.jsonl")
    if os.path.exists(half_path):
        half = [json.loads(line) for line in open(half_path) if line.strip()]
    speed = openssl_verify_rates(os.path.join(out, "openssl_speed.txt"))

    cells = {}
    for r in raw:
        if "scenario" in r:
            cells.setdefault(r["scenario"], {}).setdefault(r["row"], []).append(r)
    scenarios = [s for s in SCENARIO_ORDER if s in cells]
    results = {}
    for s in scenarios:
        results[s] = {}
        for row in ROW_ORDER:
            if row in cells[s]:
                st = cell_stats(cells[s][row])
                results[s][row] = st
        for row, st in results[s].items():
            for ref in ("nginx", "haproxy"):
                refst = results[s].get(ref)
                if refst and row != ref:
                    st[f"rps_x_{ref}"] = ratio(st["rps"], refst["rps"])
                    if row != "direct":
                        st[f"cpu_x_{ref}"] = ratio(st["cpu_ms_per_1k"], refst["cpu_ms_per_1k"])

    # Per row: the median of each figure over the rounds, and the median of
    # the per-round differences (each round's direct ran next to its gateway).
    half_rows = {}
    for row in dict.fromkeys(h["row"] for h in half):
        rounds = [h for h in half if h["row"] == row]
        med = lambda side, key: statistics.median(h[side][key] for h in rounds)
        half_rows[row] = {
            "target_rps": rounds[0]["target_rps"],
            "rounds": len(rounds),
            "direct": {k: med("direct", k) for k in ("rps", "p50_ms", "p99_ms")},
            "gateway": {k: med("gateway", k) for k in ("rps", "p50_ms", "p99_ms")},
            "p99_added_ms": statistics.median(h["gateway"]["p99_ms"] - h["direct"]["p99_ms"] for h in rounds),
            "p99_added_ms_each": [h["gateway"]["p99_ms"] - h["direct"]["p99_ms"] for h in rounds],
        }

    alg = meta.get("alg", "RS256")
    verify_s = speed.get(alg, {}).get("verify_s")
    cold = {}
    for row in ("haproxy", "scopegate"):
        st = results.get("cold", {}).get(row)
        if st and st.get("requests_per_cpu_s") and verify_s:
            # HAProxy checks the signature on every request; scopegate on every
            # cache miss (its counters say how many).
            checks = st.get("signature_checks_per_cpu_s") or st["requests_per_cpu_s"]
            cold[row] = {"requests_per_cpu_s": st["requests_per_cpu_s"], "signature_checks_per_cpu_s": checks,
                         "cache_hit_ratio": st.get("cache_hit_ratio"), "openssl_verify_s": verify_s,
                         "fraction_of_openssl": checks / verify_s}

    targets = check_targets(results, meta, cold, half_rows)
    doc = {"meta": meta, "openssl_speed": speed, "results": results, "half_load": half_rows,
           "cold_vs_openssl": cold, "targets": targets}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    md = render(doc, scenarios)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    print(md)


def check_targets(results, meta, cold, half_rows):
    t = []

    def add(name, value, met):
        t.append({"target": name, "value": value, "met": met})

    sg = {s: results.get(s, {}).get("scopegate") for s in results}
    hot = sg.get("hot")
    if hot:
        x = hot.get("rps_x_nginx")
        add("hot req/s >= 1.0x nginx", fmt(x, 2, "x"), x is not None and x >= 1.0)
        x = hot.get("rps_x_haproxy")
        add("hot req/s >= 2x HAProxy", fmt(x, 2, "x"), x is not None and x >= 2.0)
        x = hot.get("cpu_x_nginx")
        add("hot CPU/request <= nginx", fmt(x, 2, "x nginx"), x is not None and x <= 1.0)
        for s in ("deny", "public"):
            if sg.get(s) and hot.get("cpu_ms_per_1k"):
                a, b = sg[s]["cpu_ms_per_1k"], hot["cpu_ms_per_1k"]
                add(f"{s} cheaper than hot (CPU/request)", f"{fmt(a, 1)} vs {fmt(b, 1)} ms/1k", a is not None and a < b)
    if "scopegate" in cold:
        f = cold["scopegate"]["fraction_of_openssl"]
        add("cold verifications/s per core >= 80% of openssl verify", fmt(f * 100, 0, "%"), f >= 0.8)
    h = half_rows.get("scopegate")
    if h:
        x = h["p99_added_ms"]
        add("p99 added over direct at half load <= 1 ms", f"{fmt(x, 2)} ms (median of {h['rounds']})", x <= 1.0)
    rows = meta.get("rows", {})
    r = rows.get("scopegate")
    if r and r.get("ok"):
        add("RSS idle <= 10 MB", fmt(r["rss_idle_kb"] / 1024, 1, " MB"), r["rss_idle_kb"] <= 10 * 1024)
        if r.get("rss_c1000_kb"):
            add("RSS <= 50 MB with 1,000 connections", fmt(r["rss_c1000_kb"] / 1024, 1, " MB"), r["rss_c1000_kb"] <= 50 * 1024)
    return t


def render(doc, scenarios):
    meta, results = doc["meta"], doc["results"]
    lines = []
    w = lines.append
    w(f"# scopegate benchmark — {meta['date']}")
    w("")
    w(f"Machine: {meta['nproc']} cores, {meta['cpu_model']}, Linux {meta['kernel']}. "
      f"wrk -t1 -c{meta['connections']}, {meta['duration_s']} s per cell, {meta['rounds']} interleaved rounds, "
      f"medians; every gateway runs {meta['workers']} workers; tokens {meta['alg']}, cold pool {meta['tokens']:,}.")
    v = meta["versions"]
    w(f"Versions: nginx {v['nginx']}, HAProxy {v['haproxy']}, wrk {v['wrk']}, OpenSSL {v['openssl']}, scopegate {v['scopegate']}.")
    w("")
    for row in ROW_ORDER:
        r = meta["rows"].get(row)
        if r is None:
            continue
        w(f"- **{row}**: {r['note']}" if r["ok"] else f"- **{row}**: SKIPPED — {r['note']}")
    w("")
    w("| scenario | row | req/s | p50 ms | p99 ms | CPU ms / 1k req | req/s vs nginx | req/s vs HAProxy | CPU vs nginx | CPU vs HAProxy | token cache hits |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in scenarios:
        for row in ROW_ORDER:
            st = results[s].get(row)
            if not st:
                continue
            flag = "" if st["statuses_as_expected"] else " ⚠"
            cpu = "–" if row == "direct" else fmt(st["cpu_ms_per_1k"], 1)
            w(f"| {s} | {row}{flag} | {fmt(st['rps'])} | {fmt(st['p50_ms'], 2)} | {fmt(st['p99_ms'], 2)} | {cpu} | "
              f"{fmt(st.get('rps_x_nginx'), 2, 'x')} | {fmt(st.get('rps_x_haproxy'), 2, 'x')} | "
              f"{fmt(st.get('cpu_x_nginx'), 2, 'x')} | {fmt(st.get('cpu_x_haproxy'), 2, 'x')} | "
              f"{fmt(st['cache_hit_ratio'] * 100, 1, '%') if 'cache_hit_ratio' in st else '–'} |")
    w("")
    w("⚠ = some responses had an unexpected status or socket errors (see raw.jsonl). "
      "CPU = utime+stime of all the gateway's processes and threads over the cell (/proc/<pid>/stat), per 1,000 requests. "
      "direct: deny/public are plain 200s from the upstream (the client's and upstream's cost only).")
    w("")
    w("| row | RSS idle | RSS after the load | peak RSS (VmHWM) | RSS with 1,000 connections |")
    w("| --- | ---: | ---: | ---: | ---: |")
    for row in ROW_ORDER:
        r = meta["rows"].get(row)
        if not r or not r["ok"] or row == "direct":
            continue
        mb = lambda kb: fmt(kb / 1024, 1, " MB") if kb else "–"  # noqa: E731
        w(f"| {row} | {mb(r['rss_idle_kb'])} | {mb(r['rss_after_kb'])} | {mb(r['rss_peak_kb'])} | {mb(r['rss_c1000_kb'])} |")
    w("")
    w("RSS is VmRSS summed over the gateway's processes (nginx: master + workers, shared pages counted in each). "
      "Idle: after start. 1,000 connections: sampled mid-way through a hot run with 1,000 connections, before the rounds. "
      "After the load: after all the rounds (for scopegate, with the verified-token cache filled by the cold scenario). "
      "Peak: VmHWM at the end.")
    w("")
    if doc["half_load"]:
        w("p99 added over direct at half of each gateway's max hot load (fixed rate, `hey -q`: a closed-loop "
          "rate limit, not wrk2's coordinated-omission correction; Debian has no wrk2):")
        w("")
        w("| row | rate req/s | rounds | direct p99 ms | gateway p99 ms | p99 added ms (median) | added, each round |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for row in ROW_ORDER:
            h = doc["half_load"].get(row)
            if h:
                each = " / ".join(fmt(x, 2) for x in h["p99_added_ms_each"])
                w(f"| {row} | {fmt(h['target_rps'])} | {h['rounds']} | {fmt(h['direct']['p99_ms'], 2)} | {fmt(h['gateway']['p99_ms'], 2)} | {fmt(h['p99_added_ms'], 2)} | {each} |")
        w("")
    if doc["openssl_speed"]:
        w("`openssl speed` on one core (the physical limit of the cold path):")
        w("")
        w("| alg | sign/s | verify/s |")
        w("| --- | ---: | ---: |")
        for alg, r in doc["openssl_speed"].items():
            w(f"| {alg} | {fmt(r['sign_s'])} | {fmt(r['verify_s'])} |")
        w("")
    if doc["cold_vs_openssl"]:
        w("Cold path: requests per gateway CPU-second (every request a signature check) against openssl verify/s:")
        w("")
        for row, c in doc["cold_vs_openssl"].items():
            hit = c.get("cache_hit_ratio")
            extra = f" (cache hits {fmt(hit * 100, 1)}%, misses = signature checks)" if hit is not None else " (no cache: one check per request)"
            w(f"- {row}: {fmt(c['requests_per_cpu_s'])} req per CPU-s, {fmt(c['signature_checks_per_cpu_s'])} signature checks "
              f"per CPU-s{extra} = {fmt(c['fraction_of_openssl'] * 100)}% of openssl's {fmt(c['openssl_verify_s'])} verify/s")
        w("")
    if doc["targets"]:
        w("Targets (scopegate):")
        w("")
        for t in doc["targets"]:
            w(f"- {'met' if t['met'] else 'MISSED'}: {t['target']} — {t['value']}")
        w("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
