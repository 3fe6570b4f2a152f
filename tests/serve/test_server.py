"""`fusion serve` as a process: it prints its URL once listening, and SIGTERM with a stream open ends that stream
(its job cancelled) and exits 0 within the shutdown timeout; its flags are checked before anything loads."""

import os
import selectors
import signal
import subprocess
import sys
import time

import httpx
import pytest

from fusion.cli.serve import main
from fusion.serve.server import GRACE, bind

from .conftest import LONG, sse_events


def read_url(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """The URL the server prints once it listens."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=deadline - time.monotonic()):
            line = proc.stdout.readline()
            assert line, f"fusion serve exited ({proc.poll()}) before it listened"
            if "listening on " in line:
                return line.split("listening on ", 1)[1].split()[0]
    raise AssertionError("fusion serve did not listen in time")


def test_sigterm_with_an_open_stream_exits_0(checkpoint, long_job_runs_to_its_budget, tmp_path):
    assert long_job_runs_to_its_budget  # seconds of work, against the milliseconds the signal takes to arrive
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fusion.cli", "serve", str(checkpoint), "--port", "0",
                                 "--device", "cpu", "--shutdown-timeout", "0"],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        url = read_url(proc)
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/health").status_code == 200
            with client.stream("POST", "/v1/generate", json={**LONG, "stream": True}) as r:
                events = sse_events(r)
                assert next(events)[0] == "text"
                proc.send_signal(signal.SIGTERM)
                start = time.monotonic()
                rest = list(events)
            assert rest[-1] == ("done", rest[-1][1]) and rest[-1][1]["finish_reasons"] == ["cancelled"]
            assert proc.wait(timeout=60) == 0, (tmp_path / "log").read_text()
            assert time.monotonic() - start < GRACE + 10
            with pytest.raises(httpx.ConnectError):
                client.get("/health")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_flags_are_checked_before_anything_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--max-batch", "0"])
    assert e.value.code == 2 and "--max-batch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--dtype", "int8"])
    assert e.value.code == 2
    taken = bind("127.0.0.1", 0)
    taken.listen()
    try:
        with pytest.raises(SystemExit) as e:
            main([str(tmp_path), "--port", str(taken.getsockname()[1])])
        assert e.value.code == 2 and "cannot listen" in capsys.readouterr().err
    finally:
        taken.close()
