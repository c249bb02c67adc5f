"""A real Orthanc for tests: own port, own temporary storage, stopped afterwards.

The configuration is `platform/orthanc/orthanc.json` (the one `make demo` uses) with only
the port, storage and credentials changed, so tests exercise the shipped config.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "platform" / "orthanc" / "orthanc.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class OrthancProcess:
    url: str
    username: str
    password: str
    workdir: Path
    config_path: Path
    process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30) -> None:
        if shutil.which("Orthanc") is None:
            raise RuntimeError(
                "Orthanc is not installed: run `bash platform/services.sh install` "
                "(Debian packages orthanc and orthanc-dicomweb)."
            )
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            ["Orthanc", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with {self.process.returncode}; see {self.workdir}/orthanc.log"
                )
            try:
                r = requests.get(
                    f"{self.url}/system", auth=(self.username, self.password), timeout=1
                )
                if r.ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def kill(self) -> None:
        """Stop hard (SIGKILL), for fault tests."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def clear(self) -> None:
        """Delete every patient (and so everything) stored, between tests."""
        auth = (self.username, self.password)
        for patient in requests.get(f"{self.url}/patients", auth=auth, timeout=10).json():
            requests.delete(f"{self.url}/patients/{patient}", auth=auth, timeout=30)


def make_orthanc(workdir: Path, port: int | None = None) -> OrthancProcess:
    port = port or free_port()
    config = json.loads(TEMPLATE.read_text())
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config.update(
        {
            "Name": f"test-orthanc-{port}",
            "HttpPort": port,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RegisteredUsers": {"platform": "test-password"},
            "StableAge": 1,
        }
    )
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    return OrthancProcess(
        url=f"http://127.0.0.1:{port}",
        username="platform",
        password="test-password",
        workdir=workdir,
        config_path=config_path,
    )
