"""What can be checked of the deployment here: the Dockerfile's contract and that its command
starts the app; the Space front matter. (Docker itself cannot run on this machine.)"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_runs_as_user_1000_on_port_7860_with_a_health_check():
    text = _dockerfile()
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    assert "--uid 1000" in text and re.search(r"^USER user$", text, re.M)
    assert re.search(r"^EXPOSE 7860$", text, re.M)
    assert "HF_HOME=" in text and "SAM2PAL_HOST=0.0.0.0" in text
    assert "HEALTHCHECK" in text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _docker_command() -> list[str]:
    return shlex.split(re.search(r'^CMD \["(.+)"\]$', _dockerfile(), re.M).group(1).replace('", "', " "))


@pytest.mark.parametrize("how", ["docker", "serve"])
def test_the_docker_command_and_sam2pal_serve_start_the_app(tmp_path, how):
    assert _docker_command() == ["python", "app.py"]
    port = _free_port()
    env = {**os.environ, "SAM2PAL_HOST": "127.0.0.1", "SAM2PAL_MODEL": "random:tiny",
           "SAM2PAL_IMAGE_SIZE": "256", "SAM2PAL_DEVICE": "cpu"}
    if how == "docker":
        env["SAM2PAL_PORT"] = str(port)
        argv = ["app.py"]
    else:  # the same flags as app.py, given on the command line
        argv = ["-m", "sam2pal.cli", "serve", "--port", str(port), "--model", "random:tiny"]
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("the app did not answer within 120 s")
        assert "sam2pal" in page
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_space_front_matter():
    readme = (ROOT / "README.md").read_text()
    front = {line.strip() for line in readme.split("---")[1].splitlines()}
    for line in ("sdk: gradio", "app_file: app.py", "- facebook/sam2.1-hiera-tiny",
                 "- facebook/sam2.1-hiera-tiny sam2.1_hiera_tiny.pt"):
        assert line in front  # whole lines: the model entry is not a prefix of the file entry
    requirements = (ROOT / "requirements.txt").read_text()
    assert "spaces" not in requirements and "gradio==" not in requirements
