"""Start `lamm-serve` as a child process on a free port and wait until it answers (tests, benchmarks, scripts)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: Path
    api_key: str | None = None

    def wait_ready(self, timeout: float = 120) -> None:
        """Return once GET /health answers 200; RuntimeError with the log's tail if the server exits or never does."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = urllib.request.Request(f"{self.url}/health", headers=headers)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lamm-serve exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"lamm-serve did not answer within {timeout:.0f} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(args: Sequence[str], log: Path, api_key: str | None = None, timeout: float = 120,
                 env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
    """`lamm-serve ARGS --port FREE` (next to this interpreter); with `wait`, once GET /health answers 200."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "lamm-serve"), *args, "--port", str(port)]
    if api_key:
        command += ["--api-key", api_key]
    out = open(log, "w")  # noqa: SIM115 (the child writes to it for its whole life)
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or {**os.environ}, cwd=log.parent)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log, api_key)
    if wait:
        server.wait_ready(timeout)
    return server
