"""`manage.py watch_chains` as a real process against anvil: SIGKILLed in the middle of a range and restarted,
it leaves no gap and credits nothing twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.chains.helpers import ROOT, Anvil, call_data

pytestmark = pytest.mark.anvil

PROVISION = """
import json
from chains.services import chain_register, tenant_chain_enable, token_register
from chains.models import LinkedWallet
from tests.factories import TenantFactory, UserFactory
args = json.loads(ARGS)  # noqa: F821 (defined by the caller's first line)
tenant = TenantFactory(slug="kill", name="Kill")
user = UserFactory(tenant=tenant, email="kill@example.com")
chain = chain_register(chain_id=31337, name="anvil", rpc_urls=[args["url"]], confirmations=3, poll_interval_ms=50,
                       start_block=args["start"], log_chunk_blocks=5)
token_register(chain=chain, contract=args["token"], symbol="TUSD", decimals=6)
tenant_chain_enable(tenant=tenant, chain=chain)
LinkedWallet.all_tenants.create(tenant=tenant, user=user, address=args["address"], chain_id=31337)
"""

REPORT = """
import json
from chains.models import ChainCursor, Deposit
from wallet.ledger.models import JournalEntry
from wallet.ledger.verify import ledger_verify
from tenants.models import Tenant
tenant = Tenant.objects.get(slug="kill")
print("REPORT " + json.dumps({
    "deposits": sorted(Deposit.all_tenants.filter(tenant=tenant).values_list("tx_hash", flat=True)),
    "final": Deposit.all_tenants.filter(tenant=tenant, status="final").count(),
    "entries": JournalEntry.all_tenants.filter(tenant=tenant, kind="deposit").count(),
    "cursor": ChainCursor.objects.get().block_number,
    "verify": ledger_verify(tenant=tenant).ok,
}))
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "PYTEST_CURRENT_TEST")}
    env.update(VAR_DIR=str(tmp), DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}", LOG_LEVEL="WARNING",
               PYTHONUNBUFFERED="1", CHAINS_MAX_BLOCKS_PER_TICK="5", NO_PROXY="127.0.0.1")
    return env


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _report(env: dict[str, str]) -> dict[str, object]:
    output = _manage(env, "shell", "-c", REPORT)
    line = next(line for line in output.splitlines() if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT "))


def test_watch_chains_killed_mid_range_resumes_without_gap_or_double_credit(tmp_path: Path) -> None:
    node = Anvil()
    try:
        funder = node.accounts()[0]
        token = node.deploy("TestToken", "Test Dollar", "TUSD", 6)
        start = node.block_number() + 1
        address = "0x" + "42" * 20
        sent = []
        for _ in range(25):  # 50 deposits over ~250 blocks
            sent.append(node.send(funder, address, 10**15))
            sent.append(node.send(funder, token, data=call_data("TestToken", "mint", address, 1_000)))
            node.mine(8)
        end = node.block_number()

        env = _env(tmp_path)
        _manage(env, "migrate", "--noinput")
        args = json.dumps({"url": node.url, "start": start, "token": token, "address": address})
        _manage(env, "shell", "-c", f"ARGS = {json.dumps(args)}\n" + PROVISION)

        watcher = subprocess.Popen([sys.executable, "manage.py", "watch_chains", "--chain", "31337"], cwd=ROOT,
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed_at = None
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                with sqlite3.connect(tmp_path / "db.sqlite3", timeout=5) as db:
                    row = db.execute("SELECT block_number FROM chains_chaincursor").fetchone()
                if row and start + 40 <= row[0] <= end - 40:
                    watcher.send_signal(signal.SIGKILL)
                    killed_at = row[0]
                    break
                time.sleep(0.01)
        finally:
            if watcher.poll() is None:
                watcher.kill()
            watcher.wait()
        assert killed_at is not None, "the watcher did not get into the middle of the range in time"
        half = _report(env)
        assert half["cursor"] < end and len(half["deposits"]) < len(sent)

        _manage(env, "watch_chains", "--chain", "31337", "--until-idle")
        report = _report(env)
        assert report["deposits"] == sorted(sent)  # no gap, no duplicate
        assert report["final"] == len(sent) and report["entries"] == len(sent)
        assert report["cursor"] == node.block_number() and report["verify"] is True
    finally:
        node.stop()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_new_heads_subscription_wakes_the_watcher_long_before_the_poll_interval(tenant_a: object,
                                                                                user_a: object) -> None:
    from django.db import connection

    from chains.models import Deposit
    from chains.runner import WatcherThread
    from tests.fixtures.chains.fixtures import chain_env_for
    from tests.fixtures.chains.helpers import link_address, new_account

    if connection.vendor != "postgresql":
        pytest.skip("the watcher thread needs a database it can share (PostgreSQL)")
    node = Anvil()
    thread = None
    try:
        env = chain_env_for(node, tenant_a)
        env.chain.ws_url = node.url.replace("http://", "ws://")
        env.chain.poll_interval_ms = 20_000  # only the subscription can make it fast
        env.chain.save()
        address = link_address(tenant_a, user_a, new_account(), 31337).address
        thread = WatcherThread([31337]).start()
        time.sleep(1.5)  # first tick done, subscribed
        tx_hash = node.send(env.funder, address, 10**15)
        mined = time.monotonic()
        while not Deposit.all_tenants.filter(tx_hash=tx_hash).exists():
            assert time.monotonic() - mined < 5, "the deposit was not seen within 5 s (poll interval 20 s)"
            time.sleep(0.02)
    finally:
        if thread is not None:
            thread.stop()
        node.stop()
