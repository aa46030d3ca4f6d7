"""Issue 34: the main job (CI profile) served from a shared store, against a warm local store and a cold run.

    .venvs/quant/bin/python benchmarks/shared_store.py [--repeats N] [-- PYTEST ARGS]

A real S3 endpoint (moto's server mode, on localhost) holds the shared tier; each run is ``scripts/main-job.sh`` as
CI runs it, in its own process:
  cold     an empty local store and an empty bucket: builds and evaluates everything, publishes every entry
  warm     the same local store again (every entry local)
  shared   an empty local store, the bucket filled: a second CI runner (fetches instead of building)
Printed: a table of wall seconds per run and the ratios the issue sets goals for (shared <= 1.5x warm, <= 0.2x cold),
and whether the three runs' per-item answers agree. ``--repeats`` repeats warm and shared.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "quant-ci"


def moto_server(log: Path) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, f"http://127.0.0.1:{port}"


def main_job(store: Path, env: dict[str, str], report: Path, log: Path, extra: list[str]) -> float:
    """Seconds ``scripts/main-job.sh`` took (exit 0 or 1: the gates ran); raises when it did not run its gates."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(["bash", "scripts/main-job.sh", *extra], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **env, "QUANT_CACHE_DIR": str(store), "QUANT_REPORT": str(report)},
                              timeout=3600).returncode
    if code not in (0, 1):
        raise SystemExit(f"main job exited {code}: see {log}")
    return time.perf_counter() - start


def answers(report: Path) -> dict[tuple, object]:
    """Each gate's verdict, values and per-item values (the report's gates)."""
    gates = json.loads(report.read_text())["gates"]
    return {(g["scheme"], g["task"], g["metric"], g["threshold"]):
            (g["verdict"], g["quantized"], g["base"], g["n"], (g.get("extra") or {}).get("items")) for g in gates}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--work", default=None)
    a, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    work = Path(a.work or tempfile.mkdtemp(prefix="shared-store-bench-"))
    server, url = moto_server(work / "moto.log")
    try:
        import boto3

        creds = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                 "AWS_DEFAULT_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
        env = {**creds, "QUANT_SHARED_STORE": f"s3://{BUCKET}/main-job"}
        times: dict[str, list[float]] = {"cold": [], "warm": [], "shared": []}
        times["cold"].append(main_job(work / "runner-a", env, work / "cold.json", work / "cold.log", extra))
        print(f"[bench] cold {times['cold'][-1]:.1f} s", flush=True)
        for i in range(a.repeats):
            times["warm"].append(main_job(work / "runner-a", env, work / "warm.json", work / f"warm-{i}.log", extra))
            times["shared"].append(main_job(work / f"runner-b{i}", env, work / "shared.json", work / f"shared-{i}.log",
                                            extra))
            print(f"[bench] warm {times['warm'][-1]:.1f} s, shared {times['shared'][-1]:.1f} s", flush=True)
    finally:
        server.kill()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmain job (CI profile) on {os.cpu_count()} cores, shared tier on a local S3 endpoint (moto), "
          f"{a.repeats} repeat(s) of warm and shared; median wall seconds")
    print(f"{'run':8} {'seconds':>8}  runs")
    for k, v in times.items():
        print(f"{k:8} {med[k]:8.1f}  {', '.join(f'{x:.1f}' for x in v)}")
    print(f"shared / warm {med['shared'] / med['warm']:.2f}x (goal <= 1.5x); shared / cold "
          f"{med['shared'] / med['cold']:.2f}x (goal <= 0.2x)")
    same = answers(work / "cold.json") == answers(work / "warm.json") == answers(work / "shared.json")
    print(f"verdicts and per-item values identical in the three reports: {same}")
    print(f"logs and reports: {work}")


if __name__ == "__main__":
    main()
