"""Write a copy of a wheel without the files vLLM on an H100 does not import (smaller to carry).

    python scripts/gpu/strip_wheel.py IN.whl OUT.whl PATTERN [PATTERN ...]

Each PATTERN is an fnmatch pattern of paths inside the wheel; matching files are left out and their
lines dropped from the wheel's RECORD, so pip installs the rest as an ordinary wheel.
"""

from __future__ import annotations

import fnmatch
import sys
import zipfile


def strip(src: str, dst: str, patterns: list[str]) -> list[str]:
    dropped = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if any(fnmatch.fnmatch(info.filename, p) for p in patterns):
                dropped.append(info.filename)
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "\n".join(line for line in lines
                                 if not any(fnmatch.fnmatch(line.split(",")[0], p) for p in patterns)).encode() + b"\n"
            zout.writestr(info, data)
    return dropped


if __name__ == "__main__":
    gone = strip(sys.argv[1], sys.argv[2], sys.argv[3:])
    print(f"left out {len(gone)} files matching {' '.join(sys.argv[3:])}")
