"""The shared tier against a real S3 endpoint: moto's server mode (a real HTTP server speaking S3, with IAM
authentication on) started here on localhost, and the real client stack (fsspec + s3fs + aiobotocore). Runners are
separate processes with local stores of their own, as CI runners are.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "quant-store"
ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
READ = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "s3:Head*"],
                                                "Resource": "*"}]}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A moto S3 server with authentication: an admin and a read-only user, one bucket."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    anon = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="admin")  # the three actions moto lets through before authentication starts
    admin_key = iam.create_access_key(UserName="admin")["AccessKey"]
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(ALL))
    admin = {**anon, "aws_access_key_id": admin_key["AccessKeyId"], "aws_secret_access_key": admin_key["SecretAccessKey"]}
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="reader")
    reader_key = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(READ))
    boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
    yield {"url": url, "admin": admin, "env": env_for(url, admin_key["AccessKeyId"], admin_key["SecretAccessKey"]),
           "reader": env_for(url, reader_key["AccessKeyId"], reader_key["SecretAccessKey"])}
    server.kill()
    server.wait()


def env_for(url: str, key: str, secret: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}


RUNNER = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    from pytest_quant.infra.shared import SharedTier
    from pytest_quant.infra.store import Store
    root, url, name, files, pause = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    lines = []
    store = Store(root, log=lines.append, shared=SharedTier(url, lines.append))
    built = []
    def create(out: Path) -> dict:
        built.append(1)
        for i in range(files):
            (out / f"part-{i}.bin").write_bytes(os.urandom(1 << 16))  # differs per runner, like a GPU build
        time.sleep(pause)
        return {"by": name}
    entry = store.get_or_create("checkpoints", {"model": "m", "scheme": "W4A16"}, create, label="checkpoint")
    print(json.dumps({"built": bool(built), "build_id": entry.manifest["build_id"], "by": entry.manifest["info"]["by"],
                      "cached": entry.cached, "log": lines,
                      "bytes": sorted((p.name, p.read_bytes().hex()[:32]) for p in entry.path.glob("*.bin"))}))
''')


def runner(tmp_path: Path, env: dict, name: str, prefix: str, files: int = 2, pause: float = 0.0,
           wait: bool = True):
    """A runner process with a local store of its own, on ``s3://BUCKET/prefix``."""
    cmd = [sys.executable, "-c", RUNNER, str(tmp_path / f"store-{name}"), f"s3://{BUCKET}/{prefix}", name,
           str(files), str(pause)]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def objects(s3: dict, prefix: str) -> list[str]:
    client = boto3.client("s3", **s3["admin"])
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_a_second_runner_fetches_what_the_first_published(s3: dict, tmp_path: Path) -> None:
    first = runner(tmp_path, s3["env"], "a", "fetch")
    second = runner(tmp_path, s3["env"], "b", "fetch")
    assert first["built"] and not second["built"] and second["cached"]
    assert second["build_id"] == first["build_id"] and second["bytes"] == first["bytes"]
    assert any("published checkpoint" in line for line in first["log"])
    assert any(line.startswith("fetched checkpoints/") for line in second["log"])
    keys = objects(s3, "fetch/")
    assert sum(k.endswith("/manifest.json") for k in keys) == 1 and len(keys) == 3


def test_two_runners_creating_one_key_at_once_end_with_one_published_entry(s3: dict, tmp_path: Path) -> None:
    procs = [runner(tmp_path, s3["env"], name, "race", files=8, pause=1.0, wait=False) for name in ("a", "b")]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["built"] for r in results), "both built it at the same time"
    assert results[0]["build_id"] == results[1]["build_id"] and results[0]["bytes"] == results[1]["bytes"]
    assert any("another runner published it first" in line for r in results for line in r["log"])
    keys = objects(s3, "race/")
    assert sum(k.endswith("/manifest.json") for k in keys) == 1
    assert len({k.split("/")[3] for k in keys if not k.endswith("manifest.json")}) == 1, "the loser's upload is removed"


def test_an_upload_killed_midway_leaves_nothing_a_reader_accepts(s3: dict, tmp_path: Path) -> None:
    proc = runner(tmp_path, s3["env"], "killed", "killed", files=400, wait=False)
    for _ in range(600):
        if objects(s3, "killed/"):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert objects(s3, "killed/") and not any(k.endswith("manifest.json") for k in objects(s3, "killed/"))
    reader = runner(tmp_path, s3["env"], "after", "killed")
    assert reader["built"], "a half-uploaded entry must not be used"
    check = subprocess.run([sys.executable, "-m", "pytest_quant.infra.verify", f"s3://{BUCKET}/killed"],
                           env={**os.environ, **s3["env"]}, capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "half-written" in check.stdout, check.stdout + check.stderr


def test_a_flipped_byte_in_a_shared_file_is_reported_and_never_used(s3: dict, tmp_path: Path) -> None:
    first = runner(tmp_path, s3["env"], "a", "flip")
    client = boto3.client("s3", **s3["admin"])
    key = next(k for k in objects(s3, "flip/") if k.endswith("part-0.bin"))
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[100] ^= 0x01
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    second = runner(tmp_path, s3["env"], "b", "flip")
    assert second["built"] and second["build_id"] != first["build_id"]
    assert any("part-0.bin does not match its SHA-256" in line and "not used" in line for line in second["log"])
    check = subprocess.run([sys.executable, "-m", "pytest_quant.infra.verify", f"s3://{BUCKET}/flip"],
                           env={**os.environ, **s3["env"]}, capture_output=True, text=True, timeout=120)
    assert check.returncode == 1 and "corrupt" in check.stdout and "part-0.bin" in check.stdout, check.stdout


def test_a_read_only_bucket_serves_fetches_and_skips_publishing_with_one_warning(s3: dict, tmp_path: Path) -> None:
    runner(tmp_path, s3["env"], "a", "ro-served")
    served = runner(tmp_path, s3["reader"], "b", "ro-served")
    assert not served["built"]
    fresh = runner(tmp_path, s3["reader"], "c", "ro-new")
    warnings = [line for line in fresh["log"] if line.startswith("WARNING")]
    assert fresh["built"] and len(warnings) == 1 and "publishes none" in warnings[0]
    assert objects(s3, "ro-new/") == []


@pytest.mark.parametrize("case", ["bad credentials", "unreachable endpoint", "no such bucket"])
def test_a_shared_store_that_cannot_be_read_is_exit_4_in_one_line_without_the_secret(
        s3: dict, tmp_path: Path, case: str) -> None:
    env, url = dict(s3["env"]), f"s3://{BUCKET}/x"
    if case == "bad credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-1234567890"
        env["AWS_ACCESS_KEY_ID"] = "AKIANOSUCHKEY0000000"
    elif case == "unreachable endpoint":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    else:
        url = "s3://no-such-bucket-here/x"
    (tmp_path / "test_x.py").write_text("def test_x(quant_session):\n    pass\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", str(tmp_path / "test_x.py"),
                        "--quant-shared-store", url, "--quant-cache-dir", str(tmp_path / "store")],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 4, p.stdout[-2000:] + p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--quant-shared-store s3://" in lines[0], p.stderr
    assert {"bad credentials": "access refused", "unreachable endpoint": "cannot reach it",
            "no such bucket": "does not exist"}[case] in lines[0]
    assert env["AWS_SECRET_ACCESS_KEY"] not in p.stdout + p.stderr


def test_long_copies_report_progress(s3: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress lines while a file moves (fsspec's per-chunk callback), here every chunk."""
    import s3fs

    from pytest_quant.infra import shared
    from pytest_quant.infra.store import Store

    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(shared, "EVERY", 0.0)
    lines: list[str] = []
    tier = shared.SharedTier(f"s3://{BUCKET}/progress", lines.append)

    def create(out: Path) -> dict:
        (out / "big.bin").write_bytes(os.urandom(12 << 20))
        return {}

    Store(tmp_path / "a", log=lines.append, shared=tier).get_or_create("checkpoints", {"m": 1}, create, label="big")
    Store(tmp_path / "b", log=lines.append, shared=tier).get_or_create("checkpoints", {"m": 1}, create, label="big")
    assert any(line.startswith("publishing big to s3://") and " of 12 MiB" in line for line in lines), lines
    assert any(line.startswith("fetching checkpoints/") and " of 12 MiB" in line for line in lines), lines


def test_a_mounted_path_is_a_shared_store_through_the_same_code(tmp_path: Path) -> None:
    """A directory (an NFS mount, say) as the shared tier: the manifest's exclusive create is O_EXCL there."""
    from pytest_quant.infra.shared import SharedTier
    from pytest_quant.infra.store import Store

    lines: list[str] = []
    built: list[str] = []

    def create(out: Path) -> dict:
        built.append(out.name)
        (out / "w.bin").write_bytes(os.urandom(1024))
        return {}

    stores = [Store(tmp_path / name, log=lines.append, shared=SharedTier(str(tmp_path / "mount"), lines.append))
              for name in ("a", "b")]
    first = stores[0].get_or_create("checkpoints", {"m": 1}, create, label="ck")
    second = stores[1].get_or_create("checkpoints", {"m": 1}, create, label="ck")
    assert len(built) == 1 and second.cached and second.manifest["build_id"] == first.manifest["build_id"]
    assert (tmp_path / "mount" / "checkpoints" / first.path.name / "manifest.json").is_file()
