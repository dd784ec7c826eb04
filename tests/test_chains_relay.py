"""Relay of signed transactions against anvil: checks at the door, Idempotency-Key, and tracking through
pending -> included -> final, failed (reverted) and replaced (another transaction took the nonce)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from chains.models import RelayedTransaction
from chains.watcher import ChainWatcher
from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.fixtures.chains import fixtures
from tests.fixtures.chains.fixtures import ChainEnv, chain_env_for
from tests.fixtures.chains.helpers import Anvil, call_data, link_address, new_account
from wallet.events.models import OutboxEvent

pytestmark = [pytest.mark.anvil, pytest.mark.django_db]
anvil = fixtures.anvil


@pytest.fixture
def env(anvil: Anvil, tenant_a: Tenant) -> ChainEnv:
    return chain_env_for(anvil, tenant_a)


@pytest.fixture
def signer(env: ChainEnv, tenant_a: Tenant, user_a: User) -> LocalAccount:
    account = new_account()
    env.anvil.rpc("anvil_setBalance", account.address, hex(10**19))
    link_address(tenant_a, user_a, account, 31337)
    return account


def signed(account: LocalAccount, *, nonce: int = 0, to: str | None = None, value: int = 1, tip: int = 10**9,
           chain_id: int = 31337, data: str = "0x", gas: int = 21_000) -> str:
    from eth_utils import to_checksum_address

    tx = {"to": to_checksum_address(to or "0x000000000000000000000000000000000000dEaD"), "value": value,
          "gas": gas, "nonce": nonce, "maxFeePerGas": 3 * 10**9 + tip, "maxPriorityFeePerGas": tip,
          "chainId": chain_id, "type": 2, "data": data}
    return "0x" + account.sign_transaction(tx).raw_transaction.hex()


def relay(client: AppClient, raw: str, key: str | None = None, chain_id: int = 31337) -> Any:
    return client.post(f"/api/v1/chains/{chain_id}/transactions", {"raw": raw}, format="json",
                       HTTP_IDEMPOTENCY_KEY=key or uuid.uuid4().hex)


def tx_events(user: User) -> list[str]:
    return [e.type for e in OutboxEvent.all_tenants.filter(tenant_id=user.tenant_id, type__startswith="tx.")
            .order_by("seq")]


def test_relayed_transaction_goes_pending_included_final(env: ChainEnv, signer: LocalAccount, client_a: AppClient,
                                                         user_a: User) -> None:
    client_a.login_as(user_a)
    env.anvil.rpc("evm_setAutomine", False)
    key = uuid.uuid4().hex
    response = relay(client_a, signed(signer), key)
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "pending" and body["from"] == signer.address.lower() and body["nonce"] == 0
    replay = relay(client_a, signed(signer), key)
    assert replay.status_code == 202 and replay["Idempotent-Replayed"] == "true" and replay.json() == body

    watcher = ChainWatcher(env.chain)
    watcher.tick()
    assert RelayedTransaction.all_tenants.get(pk=body["id"]).status == "pending"
    env.anvil.mine(1)
    watcher.tick()
    row = RelayedTransaction.all_tenants.get(pk=body["id"])
    assert row.status == "included" and row.block_number == env.anvil.block_number()
    env.anvil.mine(2)
    watcher.tick()
    assert client_a.get(f"/api/v1/transactions/{body['id']}").json()["status"] == "final"
    assert tx_events(user_a) == ["tx.pending", "tx.included", "tx.final"]


def test_transaction_replaced_by_another_with_the_same_nonce_ends_replaced(
        env: ChainEnv, signer: LocalAccount, client_a: AppClient, user_a: User) -> None:
    client_a.login_as(user_a)
    env.anvil.rpc("evm_setAutomine", False)
    body = relay(client_a, signed(signer, nonce=0, tip=10**9)).json()
    replacement = env.anvil.rpc("eth_sendRawTransaction", signed(signer, nonce=0, tip=5 * 10**9, value=2))
    env.anvil.mine(1)
    ChainWatcher(env.chain).tick()
    row = RelayedTransaction.all_tenants.get(pk=body["id"])
    assert row.status == "replaced" and row.replaced_by == replacement
    assert tx_events(user_a) == ["tx.pending", "tx.replaced"]


def test_reverted_transaction_ends_failed(env: ChainEnv, signer: LocalAccount, client_a: AppClient,
                                          user_a: User) -> None:
    client_a.login_as(user_a)
    # A token transfer the signer cannot cover: mined, reverted.
    raw = signed(signer, to=env.token.contract, value=0, gas=100_000,
                 data=call_data("TestToken", "transfer", env.funder, 5))
    body = relay(client_a, raw).json()
    env.anvil.receipt(body["tx_hash"])
    ChainWatcher(env.chain).tick()
    assert RelayedTransaction.all_tenants.get(pk=body["id"]).status == "failed"
    assert tx_events(user_a) == ["tx.pending", "tx.failed"]


def test_refused_at_the_door(env: ChainEnv, signer: LocalAccount, client_a: AppClient, user_a: User) -> None:
    client_a.login_as(user_a)
    wrong_chain = relay(client_a, signed(signer, chain_id=1))
    assert wrong_chain.status_code == 400 and wrong_chain.json()["code"] == "transaction_wrong_chain"
    stranger = relay(client_a, signed(new_account()))
    assert stranger.status_code == 403 and stranger.json()["code"] == "transaction_sender_not_linked"
    garbage = relay(client_a, "0xdeadbeef")
    assert garbage.status_code == 400 and garbage.json()["code"] == "transaction_malformed"
    broke = new_account()
    link_address(user_a.tenant, user_a, broke, 31337)
    rejected = relay(client_a, signed(broke))  # no ether for gas: the node refuses it
    assert rejected.status_code == 422 and rejected.json()["code"] == "transaction_rejected"
    assert not RelayedTransaction.all_tenants.exists()
    no_key = client_a.post("/api/v1/chains/31337/transactions", {"raw": signed(signer)}, format="json")
    assert no_key.status_code == 400


def test_a_transaction_evicted_from_the_pool_is_broadcast_again_and_completes(
        env: ChainEnv, signer: LocalAccount, client_a: AppClient, user_a: User) -> None:
    client_a.login_as(user_a)
    env.anvil.rpc("evm_setAutomine", False)
    body = relay(client_a, signed(signer)).json()
    env.anvil.rpc("anvil_dropTransaction", body["tx_hash"])  # the node forgot it (a pool eviction, a restart)
    assert env.anvil.rpc("eth_getTransactionByHash", body["tx_hash"]) is None
    watcher = ChainWatcher(env.chain)
    watcher.tick()  # unknown, nonce free, still valid: broadcast again, not dropped
    assert RelayedTransaction.all_tenants.get(pk=body["id"]).status == "pending"
    assert env.anvil.rpc("eth_getTransactionByHash", body["tx_hash"]) is not None
    env.anvil.mine(3)
    watcher.tick()
    assert RelayedTransaction.all_tenants.get(pk=body["id"]).status == "final"
    assert tx_events(user_a) == ["tx.pending", "tx.final"]


def test_a_transaction_the_node_forgot_and_can_no_longer_include_ends_dropped(
        env: ChainEnv, signer: LocalAccount, client_a: AppClient, user_a: User) -> None:
    client_a.login_as(user_a)
    env.anvil.rpc("evm_setAutomine", False)
    body = relay(client_a, signed(signer, value=10**18)).json()
    watcher = ChainWatcher(env.chain)
    watcher.tick()
    assert RelayedTransaction.all_tenants.get(pk=body["id"]).status == "pending"  # known to the node: waits
    env.anvil.rpc("anvil_dropTransaction", body["tx_hash"])
    env.anvil.rpc("anvil_setBalance", signer.address, "0x0")  # it cannot pay any more
    watcher.tick()
    row = RelayedTransaction.all_tenants.get(pk=body["id"])
    assert row.status == "dropped" and "insufficient" in row.error.lower()
    assert tx_events(user_a) == ["tx.pending", "tx.dropped"]


def test_a_forgotten_transaction_whose_nonce_another_took_ends_replaced_not_dropped(
        env: ChainEnv, signer: LocalAccount, client_a: AppClient, user_a: User) -> None:
    client_a.login_as(user_a)
    env.anvil.rpc("evm_setAutomine", False)
    body = relay(client_a, signed(signer, nonce=0)).json()
    env.anvil.rpc("anvil_dropTransaction", body["tx_hash"])
    other = env.anvil.rpc("eth_sendRawTransaction", signed(signer, nonce=0, value=7))
    env.anvil.mine(1)
    ChainWatcher(env.chain).tick()
    row = RelayedTransaction.all_tenants.get(pk=body["id"])
    assert row.status == "replaced" and row.replaced_by == other
