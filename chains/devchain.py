"""The local dev chain of `make run`: an anvil node (chain id 31337) started by `manage.py serve`, its state
kept in `var/devchain/` across runs, with the demo ERC-20 (TUSD) and a Multicall3 deployed from the
committed artifacts and registered. Development only."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings

from chains.models import Chain, Token
from chains.services import chain_register, token_register

logger = logging.getLogger("chains.devchain")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "contracts" / "artifacts.json"
DEFAULT_ANVIL = ROOT / ".cache" / "anvil" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
DEV_CHAIN_ID = 31337


def dev_port() -> int:
    return int(os.environ.get("CHAINS_DEV_PORT", "8545"))


def dev_rpc_url(port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or dev_port()}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _rpc(url: str, method: str, *params: Any) -> Any:
    reply = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
                       timeout=10, trust_env=False).json()
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


@dataclass
class DevChain:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        """SIGTERM (anvil writes its state file on the way out), then wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _deploy(url: str, name: str, constructor_args: bytes = b"") -> str:
    contract = json.loads(ARTIFACTS.read_text())["contracts"][name]
    sender = _rpc(url, "eth_accounts")[0]
    tx_hash = _rpc(url, "eth_sendTransaction", {"from": sender, "data": contract["bytecode"] + constructor_args.hex(),
                                                "gas": hex(5_000_000)})
    for _ in range(200):
        receipt = _rpc(url, "eth_getTransactionReceipt", tx_hash)
        if receipt:
            return receipt["contractAddress"].lower()
        time.sleep(0.05)
    raise RuntimeError(f"deploying {name} timed out")


def devchain_register(url: str) -> Chain:
    """Register chain 31337 at `url` with the demo token and Multicall3 (deployed when missing on the node)."""
    from eth_abi import encode

    chain = chain_register(chain_id=DEV_CHAIN_ID, name="Local dev chain (anvil)", rpc_urls=[url],
                           ws_url=url.replace("http://", "ws://"), confirmations=2, poll_interval_ms=1000)
    token = Token.objects.filter(chain=chain).first()
    if token is None or _rpc(url, "eth_getCode", token.contract, "latest") in ("0x", ""):
        contract = _deploy(url, "TestToken", encode(["string", "string", "uint8"], ["Test Dollar", "TUSD", 6]))
        if token is not None:
            Token.objects.filter(pk=token.pk).update(contract=contract)
        else:
            token_register(chain=chain, contract=contract, symbol="TUSD", decimals=6, name="Test Dollar")
    if not chain.multicall3_address or _rpc(url, "eth_getCode", chain.multicall3_address, "latest") in ("0x", ""):
        chain.multicall3_address = _deploy(url, "Multicall3Lite")
        chain.save(update_fields=["multicall3_address"])
    return chain


def _die_with_parent() -> None:
    """In anvil's process before exec (Linux): SIGTERM when `manage.py serve` dies, however it dies (its
    own session keeps it out of Ctrl-C's process group, so that serve can stop it in order)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def devchain_start() -> DevChain | None:
    """Start anvil for `make run` (None, with a warning, when the binary is missing or the port is taken)."""
    binary = Path(os.environ.get("ANVIL_BIN") or DEFAULT_ANVIL)
    if not os.access(binary, os.X_OK):
        logger.warning("no local dev chain: anvil is missing (run `.ci/services install-anvil`)",
                       extra={"path": str(binary)})
        return None
    port = dev_port()
    deadline = time.monotonic() + 10  # a just-stopped anvil holds its port for a moment
    while not _port_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _port_free(port):
        logger.warning("no local dev chain: port %s is taken (set CHAINS_DEV_PORT)", port)
        return None
    state_dir = Path(getattr(settings, "VAR_DIR", ROOT / "var")) / "devchain"
    state_dir.mkdir(parents=True, exist_ok=True)
    # anvil's HOME is the state directory: it moves old block states to $HOME/.foundry/anvil/tmp and leaves
    # them behind when it is killed (they grow with the chain); what a restart needs is in state.json, so a
    # start clears what an earlier run left there.
    shutil.rmtree(state_dir / ".foundry" / "anvil" / "tmp", ignore_errors=True)
    log = open(state_dir / "anvil.log", "ab")  # kept open for the child's lifetime
    process = subprocess.Popen(  # noqa: S603 (our own binary path, fixed arguments)
        [str(binary), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(DEV_CHAIN_ID),
         "--block-time", "2", "--state", str(state_dir / "state.json"), "--state-interval", "30"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "HOME": str(state_dir)},
        preexec_fn=_die_with_parent)  # only prctl runs between fork and exec
    url = dev_rpc_url(port)
    deadline = time.monotonic() + 20
    while True:
        try:
            _rpc(url, "eth_chainId")
            break
        except (httpx.HTTPError, OSError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                logger.warning("no local dev chain: anvil did not start (see %s)", state_dir / "anvil.log")
                return None
            time.sleep(0.1)
    return DevChain(process=process, url=url)


def demo_xpub() -> str:
    """The demo tenant's deposit xpub, from a seed published here: development only, never for value."""
    import hashlib

    from bip32 import BIP32

    return BIP32.from_seed(hashlib.sha256(b"wallet-bff demo deposit seed").digest()).get_xpub_from_path("m/44'/60'/0'")


def devchain_seed(*, tenant: Any) -> Chain:
    """Register the dev chain (no RPC call: it may not run yet) and offer it to `tenant` (idempotent)."""
    from chains.models import TenantChain
    from chains.services import tenant_chain_enable

    chain = Chain.objects.filter(chain_id=DEV_CHAIN_ID).first()
    if chain is None:
        chain = chain_register(chain_id=DEV_CHAIN_ID, name="Local dev chain (anvil)", rpc_urls=[dev_rpc_url()],
                               ws_url=dev_rpc_url().replace("http://", "ws://"), confirmations=2,
                               poll_interval_ms=1000)
    existing = TenantChain.all_tenants.filter(tenant=tenant, chain=chain).first()
    if existing is None or not existing.enabled or not existing.deposit_xpub:
        tenant_chain_enable(tenant=tenant, chain=chain, deposit_xpub=existing.deposit_xpub if existing and
                            existing.deposit_xpub else demo_xpub())
    return chain
