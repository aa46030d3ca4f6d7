"""Prototype: the vLLM runner's file protocol (evaluate/engine.py) against an execnet channel, measured side by side.

Both start a child in another interpreter (``--python``, default the vLLM environment's) that answers requests while
keeping its state, as the runner keeps a model loaded; the child prints to stdout and stderr as vLLM does. Measured
per protocol: the round trip of a small request (median of 40), how long the parent takes to notice a child killed
with SIGKILL mid-request, whether the child (and a grandchild, as vLLM's engine core) is gone 5 s after the parent
is killed with SIGKILL, whether the child's own stdout and stderr reach the parent's log, and when a request past
its timeout is given up (the child stays busy in native-like code: ``time.sleep``).

    .venvs/quant/bin/python benchmarks/engine_protocol.py [--python .venvs/vllm/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent('''
    import json, os, subprocess, sys, threading, time
    def serve(ask):
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child {os.getpid()} grandchild {grandchild.pid}", flush=True)
        print("a warning on stderr, as vLLM logs", file=sys.stderr, flush=True)
        while True:
            req = ask()
            if req is None:
                return
            time.sleep(req.get("sleep", 0))
            print(f"answered {req['n']}", flush=True)
            yield {"n": req["n"], "pid": os.getpid(), "grandchild": grandchild.pid}
''')

FILE_CHILD = CHILD + textwrap.dedent('''
    def _end_with_parent(parent):
        while os.getppid() == parent:
            time.sleep(1)
        os.killpg(0, 9)
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True).start()
    lines = iter(sys.stdin)
    def ask():
        line = next(lines, None)
        if line is None:
            return None
        ask.resp = line.rstrip("\\n").split("\\t")[1]
        return json.load(open(line.split("\\t")[0]))
    for answer in serve(ask):
        tmp = ask.resp + ".tmp"
        json.dump(answer, open(tmp, "w")); os.replace(tmp, ask.resp)
    if "--group-kill-at-eof" in sys.argv:  # lm_runner.py --serve: stdin closed, the parent is gone or done
        os.killpg(0, 9)
''')

EXECNET_CHILD = CHILD + textwrap.dedent('''
    os.setsid()  # a process group of its own, as Popen(start_new_session=True) gives the file runner
    log = open(channel.receive(), "a", buffering=1)
    os.dup2(log.fileno(), 1); os.dup2(log.fileno(), 2)  # execnet took fd 1 for its protocol: the child's own output
    sys.stdout = sys.stderr = log
    def ask():
        try:
            return channel.receive()
        except EOFError:  # the parent is gone: end the process group, as the file runner does
            os.killpg(0, 9)
    for answer in serve(ask):
        channel.send(answer)
''')


class FileEngine:
    """evaluate/engine.py's protocol: request file, a line on stdin, the response file polled every 0.2 s."""
    name = "file"
    args: tuple[str, ...] = ()

    def __init__(self, python: str, tmp: Path) -> None:
        self.tmp, self.n = Path(tempfile.mkdtemp(dir=tmp)), 0
        self.log = tmp / "file.log"
        script = tmp / "file_child.py"
        script.write_text(FILE_CHILD)
        self.proc = subprocess.Popen([python, str(script), *self.args], stdin=subprocess.PIPE, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True, text=True)

    def ask(self, req: dict, timeout: float = 60.0) -> dict:
        self.n += 1
        rq, rs = self.tmp / f"req-{self.n}.json", self.tmp / f"resp-{self.n}.json"
        rq.write_text(json.dumps({**req, "n": self.n}))
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{rq}\t{rs}\n")
        self.proc.stdin.flush()
        start = time.perf_counter()
        while not rs.is_file():
            if self.proc.poll() is not None:
                raise RuntimeError(f"child died ({self.proc.returncode})")
            if time.perf_counter() - start > timeout:
                raise TimeoutError
            time.sleep(0.2)
        return json.loads(rs.read_text())

    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class FileEngineGroupKill(FileEngine):
    """The same, with the runner's fix: at the end of stdin (its parent gone) the child kills its process group."""
    name = "file, group kill at EOF"
    args = ("--group-kill-at-eof",)


class ExecnetEngine:
    """An execnet popen gateway into the other interpreter (nothing installed there) and one channel."""
    name = "execnet"

    def __init__(self, python: str, tmp: Path) -> None:
        import execnet

        self.log = tmp / "execnet.log"
        self.gw = execnet.makegateway(f"popen//python={python}")
        self.channel = self.gw.remote_exec(EXECNET_CHILD)
        self.channel.send(str(self.log))
        self.n = 0

    def ask(self, req: dict, timeout: float = 60.0) -> dict:
        import execnet

        self.n += 1
        try:
            self.channel.send({**req, "n": self.n})
            return self.channel.receive(timeout=timeout)
        except self.channel.TimeoutError:
            raise TimeoutError from None
        except (EOFError, OSError, execnet.RemoteError) as e:
            raise RuntimeError(f"child died ({type(e).__name__})") from None

    def pid(self) -> int:
        return self.gw.remote_exec("import os; channel.send(os.getpid())").receive(timeout=10)

    def close(self) -> None:
        self.gw._io.kill()  # exit() waits for the child's work to end
        self.gw.exit()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def measure(cls: type, python: str, tmp: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    e = cls(python, tmp)
    try:
        first = e.ask({})
        times = []
        for _ in range(40):
            t = time.perf_counter()
            e.ask({})
            times.append(time.perf_counter() - t)
        out["round trip (median of 40)"] = f"{1000 * statistics.median(times):.1f} ms"
        timed = time.perf_counter()
        try:
            e.ask({"sleep": 10}, timeout=2)
            out["request past a 2 s timeout"] = "answered (no timeout)"
        except TimeoutError:
            out["request past a 2 s timeout"] = f"given up after {time.perf_counter() - timed:.2f} s"
        e.close()
        e = cls(python, tmp)
        first = e.ask({})
        child = first["pid"]
        os.kill(child, signal.SIGKILL)
        t = time.perf_counter()
        try:
            e.ask({"sleep": 1})
            out["child killed -9: noticed after"] = "never"
        except RuntimeError:
            out["child killed -9: noticed after"] = f"{1000 * (time.perf_counter() - t):.0f} ms"
        log = e.log.read_text(errors="replace")
        out["child's stdout and stderr in the log"] = str("answered" in log and "stderr, as vLLM" in log)
    finally:
        e.close()
    # the parent killed -9: a parent process of its own that starts the engine, then dies
    script = tmp / "parent.py"
    script.write_text(textwrap.dedent(f'''
        import json, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from engine_protocol import {cls.__name__} as E
        from pathlib import Path
        e = E({python!r}, Path({str(tmp)!r}))
        print(json.dumps(e.ask({{}})), flush=True)
        time.sleep(600)
    '''))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    answer = json.loads(parent.stdout.readline())
    parent.kill()
    parent.wait()
    time.sleep(5)
    left = [p for p in (answer["pid"], answer["grandchild"]) if alive(p)]
    out["parent killed -9: child, grandchild gone after 5 s"] = "yes" if not left else f"no: {left} alive"
    for p in left:
        os.kill(p, signal.SIGKILL)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default=str(Path(__file__).resolve().parents[1] / ".venvs" / "vllm" / "bin" / "python"))
    a = p.parse_args()
    results = {}
    for cls in (FileEngine, FileEngineGroupKill, ExecnetEngine):
        with tempfile.TemporaryDirectory() as tmp:
            results[cls.name] = measure(cls, a.python, Path(tmp))
    rows = list(next(iter(results.values())))
    width = max(map(len, rows))
    print(f"{'':{width}}  " + "  ".join(f"{n:>28}" for n in results))
    for r in rows:
        print(f"{r:{width}}  " + "  ".join(f"{results[n][r]:>28}" for n in results))


if __name__ == "__main__":
    main()
