"""Peak GPU memory per GPU from ``nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500``."""

from __future__ import annotations

import sys

peak: dict[str, int] = {}
samples = 0
for line in open(sys.argv[1]):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 2 and parts[1].isdigit():
        samples += 1
        peak[parts[0]] = max(peak.get(parts[0], 0), int(parts[1]))
print(f"peak GPU memory used over {samples} samples: "
      + ", ".join(f"GPU {i}: {mib} MiB" for i, mib in sorted(peak.items())))
