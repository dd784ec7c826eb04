"""The local dev chain of `make run` (chains/devchain.py): anvil dies with the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures.chains.helpers import ROOT
from tests.stream_e2e_helpers import free_port

pytestmark = pytest.mark.anvil

START = """
import django, time
django.setup()
from chains.devchain import devchain_start
chain = devchain_start()
print(chain.process.pid if chain else "none", flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_dev_chain_stops_when_serve_is_killed(tmp_path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "wallet.settings.development", "VAR_DIR": str(tmp_path),
           "CHAINS_DEV_PORT": str(free_port()), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    parent = subprocess.Popen([sys.executable, "-c", START], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline().strip()
        assert line.isdigit(), f"anvil did not start: {line!r}"
        anvil = int(line)
        assert _alive(anvil)
        # Its HOME is the state directory, where it leaves block states it moved to disk (cleared at start).
        with open(f"/proc/{anvil}/environ", "rb") as environ:
            assert f"HOME={tmp_path / 'devchain'}".encode() in environ.read().split(b"\0")
        parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can tell anvil
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(anvil) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(anvil), "anvil outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


def test_a_throwaway_anvil_keeps_its_files_in_a_home_removed_at_stop() -> None:
    """anvil moves old block states to $HOME/.foundry/anvil/tmp; the test helper's anvil has a HOME of its
    own, removed when it stops (they once filled the disk: tens of gigabytes from bench-chains runs)."""
    from tests.fixtures.chains.helpers import Anvil

    node = Anvil()
    try:
        with open(f"/proc/{node.process.pid}/environ", "rb") as environ:
            assert f"HOME={node.home}".encode() in environ.read().split(b"\0")
        node.mine(1300)  # past ~1,200 blocks anvil starts moving old states to disk: into that HOME
        assert os.listdir(os.path.join(node.home, ".foundry", "anvil", "tmp"))
    finally:
        node.stop()
    assert not os.path.exists(node.home)
