"""Turn pytest-benchmark's JSON into benches/results/latest.json and a table."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

FLOORS = {  # from the data-plane issue; floors, not targets
    "srtp_vs_raw": (">=", 0.85),
    "fanout_copies_per_s": (">=", 30e6),
    "e2e_vs_raw": ("<=", 1.5),
    "e2e_calls_zero_loss": (">=", 1000),
}


def main(raw_path: str, out_path: str) -> int:
    data = json.loads(Path(raw_path).read_text())
    figures: dict = {}
    for bench in data["benchmarks"]:
        figures.update(bench.get("extra_info", {}))
    if "srtp_vs_raw_paired" in figures:  # median of interleaved fork/raw pairs
        figures["srtp_vs_raw"] = figures["srtp_vs_raw_paired"]
    elif "srtp_fork_pkts_per_s" in figures and "raw_srtp_protect_pkts_per_s" in figures:
        figures["srtp_vs_raw"] = figures["srtp_fork_pkts_per_s"] / figures["raw_srtp_protect_pkts_per_s"]
    if "e2e_cpu_us_per_pkt" in figures and figures.get("raw_udp_cpu_us_per_pkt"):
        figures["e2e_vs_raw"] = figures["e2e_cpu_us_per_pkt"] / figures["raw_udp_cpu_us_per_pkt"]
    if "e2e_cpu_us_per_pkt" in figures and figures.get("raw_udp_1sock_cpu_us_per_pkt"):
        figures["e2e_vs_raw_1sock"] = (
            figures["e2e_cpu_us_per_pkt"] / figures["raw_udp_1sock_cpu_us_per_pkt"]
        )
    if "srtp_fork_pkts_per_s" in figures and "python_baseline_pkts_per_s" in figures:
        figures["c_vs_python"] = figures["srtp_fork_pkts_per_s"] / figures["python_baseline_pkts_per_s"]
    figures["machine"] = {"cpu": platform.processor() or platform.machine(),
                          "python": platform.python_version(),
                          "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(out_path).write_text(json.dumps(figures, indent=2, sort_keys=True, default=str) + "\n")

    rows = [
        ("fanout_copies_per_s", "{:,.0f}"),
        ("srtp_fork_pkts_per_s", "{:,.0f}"),
        ("raw_srtp_protect_pkts_per_s", "{:,.0f}"),
        ("srtp_vs_raw", "{:.3f}"),
        ("python_baseline_pkts_per_s", "{:,.0f}"),
        ("c_vs_python", "{:.1f}x"),
        ("e2e_reference_calls", "{}"),
        ("e2e_cpu_us_per_pkt", "{:.3f}"),
        ("raw_udp_cpu_us_per_pkt", "{:.3f}"),
        ("e2e_vs_raw", "{:.3f}"),
        ("raw_udp_1sock_cpu_us_per_pkt", "{:.3f}"),
        ("e2e_vs_raw_1sock", "{:.3f}"),
        ("e2e_loss_pct", "{:.4f}"),
        ("e2e_calls_zero_loss", "{}"),
        ("e2e_command_ms_p50", "{:.2f}"),
        ("e2e_command_ms_p99", "{:.2f}"),
        ("e2e_command_ms_max", "{:.2f}"),
    ]
    print(f"\n{'metric':32} {'value':>16}  floor")
    print("-" * 62)
    failed = []
    for key, fmt in rows:
        if key not in figures:
            continue
        floor = FLOORS.get(key)
        note = ""
        if floor:
            op, limit = floor
            ok = figures[key] >= limit if op == ">=" else figures[key] <= limit
            note = f"{op} {limit:,g} {'ok' if ok else 'MISSED'}"
            if not ok:
                failed.append(key)
        print(f"{key:32} {fmt.format(figures[key]):>16}  {note}")
    for calls, step in sorted(figures.get("e2e_steps", {}).items(), key=lambda kv: int(kv[0])):
        print(f"  e2e {int(calls):>5} calls: {step['cpu_us_per_pkt']:.3f} us/pkt, "
              f"loss {step['loss_pct']:.4f}%, dropped inside {step['dropped_inside']}")
    print(f"\nwrote {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
