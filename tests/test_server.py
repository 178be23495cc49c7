"""The `transformers serve` context manager: real starts, clean stops, clear failures, no orphans."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from alpaca_helpers.self_instruct.server import ServerError, health_ok, serve
from alpaca_helpers.self_instruct.teacher import Teacher, TeacherConfig

pytestmark = pytest.mark.slow


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_serve_answers_then_stops_on_ctrl_c(default_model_dir, tmp_path):
    log = tmp_path / "server.log"
    with pytest.raises(KeyboardInterrupt):
        with serve(default_model_dir, log_path=log) as server:
            assert server.base_url.startswith("http://127.0.0.1:") and health_ok(server.root_url)
            assert json.loads(server.sampling_body()["generation_config"])["do_sample"] is True
            teacher = Teacher(TeacherConfig(base_url=server.base_url, model=server.model, max_tokens=24,
                                            extra_body=server.sampling_body()))
            reply = teacher.complete("Colors:\n1. Red\n2. Blue\n3.", stop=["\n"])
            assert reply.text and "\n" not in reply.text and reply.completion_tokens > 0
            pid = server.process.pid
            raise KeyboardInterrupt
    assert server.process.poll() is not None and _gone(pid)
    assert not health_ok(server.root_url)
    assert "Uvicorn running on http://127.0.0.1" in log.read_text()


def test_port_in_use_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            with serve(port=port):
                pass


def test_a_dying_server_shows_its_log(default_model_dir, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    shutil.copy(default_model_dir / "config.json", broken)  # a config but no weights or tokenizer
    with pytest.raises(ServerError) as err:
        with serve(broken, log_path=tmp_path / "server.log", startup_timeout=120):
            pass
    message = str(err.value)
    assert "exited with code" in message and "last lines:" in message and str(tmp_path / "server.log") in message
    assert len(message.splitlines()) > 2  # the log tail is in the message


def test_no_orphan_when_the_parent_is_killed(default_model_dir, tmp_path):
    script = ("import sys, time\nfrom alpaca_helpers.self_instruct.server import serve\n"
              f"with serve({str(default_model_dir)!r}) as s:\n"
              "    print(s.process.pid, flush=True)\n    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().startswith("transformers serve ")  # serve's precision line
        server_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)  # no finally, no atexit: only the kernel can clean up
        parent.wait(timeout=30)
        assert _gone(server_pid), "the server outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
