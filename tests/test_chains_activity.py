"""Outgoing transfers of watched addresses (on-chain activity, never credited), internal native transfers and
reverted ones (from `trace_filter`), and the fall back to block bodies when the node has no `trace_filter`;
against a real anvil."""

from __future__ import annotations

from typing import Any

import pytest

from chains.models import Chain, Deposit
from chains.watcher import ChainWatcher, watcher_run_until_idle
from tenants.models import Tenant, User
from tests.fixtures.chains import fixtures
from tests.fixtures.chains.fixtures import ChainEnv
from tests.fixtures.chains.helpers import (
    RpcProxy,
    balance,
    call_data,
    forward_call_data,
    forwarder_deploy,
    link_address,
    new_account,
)
from wallet.events.models import OutboxEvent
from wallet.ledger.models import JournalEntry
from wallet.ledger.verify import ledger_verify

pytestmark = [pytest.mark.anvil, pytest.mark.django_db]
anvil = fixtures.anvil


chain_env = fixtures.chain_env_each_source  # every test with traces and with block bodies


def event_types(user: User, tx_hash: str) -> list[str]:
    return list(OutboxEvent.all_tenants.filter(tenant_id=user.tenant_id, data__tx_hash=tx_hash).order_by("seq")
                .values_list("type", flat=True))


def test_outgoing_native_and_token_transfers_are_recorded_not_credited_and_roll_back(
        chain_env: ChainEnv, tenant_a: Tenant, user_a: User) -> None:
    node, chain = chain_env.anvil, chain_env.chain
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    elsewhere = node.accounts()[2]
    funding = node.send(chain_env.funder, linked, 10**18)
    chain_env.mint(linked, 5_000_000)
    node.mine(3)
    watcher = ChainWatcher(chain)
    watcher_run_until_idle(chain, watcher=watcher)
    assert balance(user_a, "ETH:31337") == 10**18 and balance(user_a, "TUSD:31337") == 5_000_000

    node.rpc("anvil_impersonateAccount", linked)
    native_out = node.send(linked, elsewhere, 3 * 10**17, gas=21_000)
    token_out = node.send(linked, chain_env.token.contract, data=call_data("TestToken", "transfer", elsewhere,
                                                                            2_000_000), gas=100_000)
    watcher_run_until_idle(chain, watcher=watcher)
    rows = {d.tx_hash: d for d in Deposit.all_tenants.filter(tenant=tenant_a, direction=Deposit.Direction.OUT)}
    assert set(rows) == {native_out, token_out}
    assert rows[native_out].from_address == linked and rows[native_out].to_address == elsewhere
    assert rows[native_out].amount == 3 * 10**17 and rows[native_out].log_index == -1
    assert rows[token_out].asset.code == "TUSD:31337" and rows[token_out].amount == 2_000_000
    assert {d.status for d in rows.values()} == {Deposit.Status.SEEN}

    node.mine(1)
    watcher_run_until_idle(chain, watcher=watcher)
    out = Deposit.all_tenants.get(tx_hash=native_out)
    assert out.status == Deposit.Status.FINAL and out.entry_id is None
    # Activity only: the ledger (the app's balance) is untouched by what the address sent on-chain.
    assert balance(user_a, "ETH:31337") == 10**18 and balance(user_a, "TUSD:31337") == 5_000_000
    assert JournalEntry.all_tenants.filter(tenant=tenant_a, kind=JournalEntry.Kind.DEPOSIT).count() == 2
    assert event_types(user_a, native_out) == ["outgoing.seen", "outgoing.final"]
    assert event_types(user_a, funding)[-1] == "deposit.final"

    node.rpc("anvil_reorg", 3, [])  # both outgoing transfers' blocks are replaced
    watcher_run_until_idle(chain, watcher=watcher)
    rows = {d.tx_hash: d for d in Deposit.all_tenants.filter(tenant=tenant_a, direction=Deposit.Direction.OUT)}
    assert {d.status for d in rows.values()} == {Deposit.Status.REORGED}
    assert all(d.reversal_id is None for d in rows.values())
    assert event_types(user_a, token_out)[-1] == "outgoing.reorged"
    assert balance(user_a, "ETH:31337") == 10**18
    assert ledger_verify(tenant=tenant_a).ok


def test_a_transfer_between_two_watched_addresses_is_one_deposit_and_one_outgoing(
        chain_env: ChainEnv, tenant_a: Tenant, user_a: User) -> None:
    from tests.factories import UserFactory

    node, chain = chain_env.anvil, chain_env.chain
    source = link_address(tenant_a, user_a, new_account(), 31337).address
    other = UserFactory(tenant=tenant_a)
    target = link_address(tenant_a, other, new_account(), 31337).address
    node.send(chain_env.funder, source, 10**18)
    node.rpc("anvil_impersonateAccount", source)
    moved = node.send(source, target, 10**17, gas=21_000)
    node.mine(3)
    watcher_run_until_idle(chain)
    rows = Deposit.all_tenants.filter(tenant=tenant_a, tx_hash=moved)
    assert sorted((d.direction, d.user_id) for d in rows) == [("in", other.pk), ("out", user_a.pk)]
    assert JournalEntry.all_tenants.filter(tenant=tenant_a, kind=JournalEntry.Kind.DEPOSIT).count() == 2


def test_a_reverted_transfer_to_a_watched_contract_is_not_a_deposit(chain_env: ChainEnv, tenant_a: Tenant,
                                                                  user_a: User) -> None:
    """A contract wallet that is linked receives a transfer that reverts (the flag): nothing moved."""
    from chains.models import LinkedWallet

    node, chain = chain_env.anvil, chain_env.chain
    contract_wallet = forwarder_deploy(node)
    LinkedWallet.all_tenants.create(tenant=tenant_a, user=user_a, address=contract_wallet, chain_id=31337,
                                    is_contract=True)
    sink = new_account().address.lower()
    reverted = node.send(chain_env.funder, contract_wallet, 10**15, data=forward_call_data(sink, revert=True),
                         gas=100_000)
    assert node.receipt(reverted)["status"] == "0x0"
    kept = node.send(chain_env.funder, contract_wallet, 10**15, data=forward_call_data(sink), gas=100_000)
    node.mine(3)
    watcher_run_until_idle(chain)
    rows = {(d.tx_hash, d.direction) for d in Deposit.all_tenants.filter(tenant=tenant_a)}
    assert (reverted, "in") not in rows and (kept, "in") in rows
    if chain.native_source == Chain.NativeSource.TRACES:  # the contract paying the sink on: an internal transfer
        assert (kept, "out") in rows


@pytest.mark.parametrize("revert", [False, True])
def test_internal_native_transfers_are_seen_from_traces(anvil: Any, tenant_a: Tenant, user_a: User,
                                                        revert: bool) -> None:
    env = fixtures.chain_env_for(anvil, tenant_a, native_source="traces")
    node, chain = env.anvil, env.chain
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    forwarder = forwarder_deploy(node)
    paid = node.send(env.funder, forwarder, 5 * 10**15, data=forward_call_data(linked, revert=revert), gas=100_000)
    node.mine(3)
    watcher_run_until_idle(chain)
    rows = list(Deposit.all_tenants.filter(tenant=tenant_a, tx_hash=paid))
    if revert:  # the internal call succeeded, but the transaction around it reverted: nothing arrived
        assert rows == []
        return
    assert len(rows) == 1
    deposit = rows[0]
    assert deposit.status == Deposit.Status.FINAL and deposit.from_address == forwarder
    assert deposit.amount == 5 * 10**15 and deposit.log_index == -2  # the transaction's second trace
    assert balance(user_a, "ETH:31337") == 5 * 10**15
    assert ledger_verify(tenant=tenant_a).ok


def test_auto_falls_back_to_block_bodies_when_the_node_has_no_trace_filter(anvil: Any, tenant_a: Tenant,
                                                                           user_a: User) -> None:
    proxy = RpcProxy(anvil.url)
    proxy.state.unsupported = {"trace_filter"}
    try:
        env = fixtures.chain_env_for(anvil, tenant_a)  # native_source = auto
        env.chain.rpc_urls = [proxy.url]
        env.chain.save()
        linked = link_address(tenant_a, user_a, new_account(), 31337).address
        tx = anvil.send(env.funder, linked, 10**18)
        anvil.mine(3)
        watcher = ChainWatcher(env.chain)
        watcher_run_until_idle(env.chain, watcher=watcher)
        assert watcher.native_mode == "bodies"
        assert Deposit.all_tenants.get(tenant=tenant_a, tx_hash=tx).status == Deposit.Status.FINAL
        assert balance(user_a, "ETH:31337") == 10**18
    finally:
        proxy.stop()


def test_activity_api_lists_both_directions_and_deposits_only_incoming(anvil: Any, tenant_a: Tenant, user_a: User,
                                                                       client_a: Any) -> None:
    env = fixtures.chain_env_for(anvil, tenant_a)
    node, chain = env.anvil, env.chain
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    incoming = node.send(env.funder, linked, 10**18)
    node.rpc("anvil_impersonateAccount", linked)
    outgoing = node.send(linked, node.accounts()[3], 10**17, gas=21_000)
    node.mine(3)
    watcher_run_until_idle(chain)
    client_a.login_as(user_a)
    both = client_a.get("/api/v1/activity").json()["results"]
    assert sorted((r["tx_hash"], r["direction"]) for r in both) == sorted([(incoming, "in"), (outgoing, "out")])
    out = client_a.get("/api/v1/activity?direction=out").json()["results"]
    assert [(r["tx_hash"], r["status"], r["entry_id"]) for r in out] == [(outgoing, "final", None)]
    assert client_a.get(f"/api/v1/activity/{out[0]['id']}").json()["to"] == node.accounts()[3]
    assert [r["tx_hash"] for r in client_a.get("/api/v1/deposits").json()["results"]] == [incoming]
    assert client_a.get(f"/api/v1/deposits/{out[0]['id']}").status_code == 404
    bad = client_a.get("/api/v1/activity?direction=sideways")
    assert bad.status_code == 400 and bad.json()["code"] == "activity_direction_invalid"


def test_a_contract_wallet_is_watched_only_on_the_chain_it_was_verified_on(chain_env: ChainEnv, tenant_a: Tenant,
                                                                          user_a: User) -> None:
    """ERC-1271 proves control of a contract on one chain; the same address elsewhere may be someone else's
    contract, so deposits there are not the user's. An ordinary (EOA) address is the user's on every chain."""
    from chains.models import LinkedWallet

    chain = chain_env.chain
    elsewhere = new_account().address.lower()
    here = new_account().address.lower()
    eoa = new_account().address.lower()
    LinkedWallet.all_tenants.create(tenant=tenant_a, user=user_a, address=elsewhere, chain_id=chain.chain_id + 1,
                                    is_contract=True)
    LinkedWallet.all_tenants.create(tenant=tenant_a, user=user_a, address=here, chain_id=chain.chain_id,
                                    is_contract=True)
    LinkedWallet.all_tenants.create(tenant=tenant_a, user=user_a, address=eoa, chain_id=chain.chain_id + 1)
    watcher = ChainWatcher(chain)
    watcher.refresh_watch()
    assert here in watcher.watch and eoa in watcher.watch
    assert elsewhere not in watcher.watch
