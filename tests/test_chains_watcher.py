"""The watcher against a real anvil: deposits (native and ERC-20, to linked and deposit addresses) from seen to
final and credited once; reorgs before and after crediting; a crash mid-range; the stale-head alarm."""

from __future__ import annotations

from typing import Any

import pytest

from chains import metrics
from chains.models import BlockRecord, ChainCursor, Deposit
from chains.selectors import tenant_chain_get
from chains.services import deposit_address_ensure
from chains.watcher import ChainWatcher, watcher_run_until_idle
from tenants.models import Tenant, User
from tests.fixtures.chains import fixtures
from tests.fixtures.chains.fixtures import ChainEnv
from tests.fixtures.chains.helpers import balance, link_address, new_account
from wallet.events.models import OutboxEvent
from wallet.ledger.models import Account, JournalEntry
from wallet.ledger.verify import ledger_verify

pytestmark = [pytest.mark.anvil, pytest.mark.django_db]
anvil = fixtures.anvil


chain_env = fixtures.chain_env_each_source  # every test with traces and with block bodies


def deposit_events(user: User) -> list[tuple[str, str, str]]:
    """(type, tx hash, status) of the user's deposit events, in stream order."""
    rows = OutboxEvent.all_tenants.filter(tenant_id=user.tenant_id, type__startswith="deposit.").order_by("seq")
    return [(e.type, e.data["tx_hash"], e.data["status"]) for e in rows]


def deposit_entries(tenant: Tenant) -> list[JournalEntry]:
    return list(JournalEntry.all_tenants.filter(tenant=tenant, kind=JournalEntry.Kind.DEPOSIT))


def test_native_and_token_deposits_to_linked_and_deposit_addresses_reach_final_and_credit_once(
        chain_env: ChainEnv, tenant_a: Tenant, user_a: User) -> None:
    node, chain = chain_env.anvil, chain_env.chain
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    custodial = deposit_address_ensure(tenant=tenant_a, user=user_a,
                                       tenant_chain=tenant_chain_get(tenant=tenant_a, chain_id=31337)).address
    node.rpc("evm_setAutomine", False)  # all of them in one block
    native_to_linked = node.send(chain_env.funder, linked, 10**18)
    native_to_deposit = node.send(chain_env.funder, custodial, 2 * 10**18)
    token_to_linked = chain_env.mint(linked, 5_000_000)
    token_to_deposit = chain_env.mint(custodial, 7_000_000)
    node.send(chain_env.funder, node.accounts()[1], 10**18)  # not ours: ignored
    node.mine(1)
    node.rpc("evm_setAutomine", True)
    watcher = ChainWatcher(chain)

    watcher_run_until_idle(chain, watcher=watcher)  # head = the last of these blocks: 1 confirmation for it
    rows = {d.tx_hash: d for d in Deposit.all_tenants.filter(tenant=tenant_a)}
    assert set(rows) == {native_to_linked, native_to_deposit, token_to_linked, token_to_deposit}
    assert rows[native_to_deposit].address_kind == Deposit.Kind.DEPOSIT and rows[native_to_deposit].log_index == -1
    assert rows[token_to_linked].asset.code == "TUSD:31337" and rows[token_to_linked].amount == 5_000_000
    assert {d.status for d in rows.values()} == {Deposit.Status.SEEN}
    assert balance(user_a, "ETH:31337") == 0

    node.mine(1)
    watcher_run_until_idle(chain, watcher=watcher)
    assert Deposit.all_tenants.get(tx_hash=native_to_linked).status == Deposit.Status.CONFIRMING
    node.mine(1)  # 3 confirmations: final
    watcher_run_until_idle(chain, watcher=watcher)
    rows = {d.tx_hash: d for d in Deposit.all_tenants.filter(tenant=tenant_a)}
    assert {d.status for d in rows.values()} == {Deposit.Status.FINAL}
    assert balance(user_a, "ETH:31337") == 3 * 10**18
    assert balance(user_a, "TUSD:31337") == 12_000_000
    assert len(deposit_entries(tenant_a)) == 4

    # Ticking again (and a second watcher from scratch over the same range) credits nothing more.
    node.mine(2)
    watcher_run_until_idle(chain, watcher=watcher)
    ChainCursor.objects.filter(chain=chain).update(block_number=chain.start_block - 1)
    BlockRecord.objects.filter(chain=chain).delete()
    watcher_run_until_idle(chain, watcher=ChainWatcher(chain))
    assert len(deposit_entries(tenant_a)) == 4
    assert balance(user_a, "ETH:31337") == 3 * 10**18
    assert Deposit.all_tenants.filter(tenant=tenant_a).count() == 4

    events = deposit_events(user_a)
    for tx in (native_to_linked, token_to_deposit):
        kinds = [t for t, h, _ in events if h == tx]
        assert kinds[0] == "deposit.seen" and kinds[-1] == "deposit.final" and kinds.count("deposit.final") == 1
    assert [t for t, h, _ in events if h == native_to_linked] == ["deposit.seen", "deposit.confirming",
                                                                 "deposit.final"]
    assert ledger_verify(tenant=tenant_a).ok


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_reorg_before_crediting_rolls_the_deposit_back(chain_env: ChainEnv, tenant_a: Tenant, user_a: User,
                                                       depth: int) -> None:
    node, chain = chain_env.anvil, chain_env.chain  # confirmations = 3
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    tx = node.send(chain_env.funder, linked, 10**18)
    node.mine(depth - 1)  # the deposit is `depth` blocks deep: still below 3 confirmations when depth < 3
    watcher = ChainWatcher(chain)
    watcher_run_until_idle(chain, watcher=watcher)
    deposit = Deposit.all_tenants.get(tenant=tenant_a, tx_hash=tx)
    assert deposit.status in (Deposit.Status.SEEN, Deposit.Status.CONFIRMING, Deposit.Status.FINAL)
    credited_before = deposit.status == Deposit.Status.FINAL  # depth 3 reaches the confirmation depth

    node.rpc("anvil_reorg", depth, [])  # the deposit's block is replaced; anvil drops its transaction
    result = watcher.tick()
    assert result.reorged_to == node.block_number() - depth
    deposit.refresh_from_db()
    assert deposit.status == Deposit.Status.REORGED
    assert ("deposit.reorged", tx, "reorged") in deposit_events(user_a)
    assert balance(user_a, "ETH:31337") == 0
    assert bool(deposit.reversal_id) == credited_before
    assert ledger_verify(tenant=tenant_a).ok
    # The replaced blocks' hashes are what the watcher now holds.
    top = BlockRecord.objects.get(chain=chain, number=node.block_number())
    assert top.hash == node.rpc("eth_getBlockByNumber", hex(node.block_number()), False)["hash"]


def test_reorg_deeper_than_the_confirmations_after_crediting_posts_a_reversal(
        chain_env: ChainEnv, tenant_a: Tenant, user_a: User) -> None:
    node, chain = chain_env.anvil, chain_env.chain
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    native = node.send(chain_env.funder, linked, 10**18)
    token = chain_env.mint(linked, 9_000_000)
    node.mine(4)
    watcher = ChainWatcher(chain)
    watcher_run_until_idle(chain, watcher=watcher)
    assert balance(user_a, "ETH:31337") == 10**18 and balance(user_a, "TUSD:31337") == 9_000_000

    node.rpc("anvil_reorg", 6, [])  # beyond the 3 confirmations: both deposits' blocks are replaced
    watcher_run_until_idle(chain, watcher=watcher)
    rows = {d.tx_hash: d for d in Deposit.all_tenants.filter(tenant=tenant_a)}
    assert {rows[native].status, rows[token].status} == {Deposit.Status.REORGED}
    assert rows[native].reversal.reverses_id == rows[native].entry_id
    assert balance(user_a, "ETH:31337") == 0 and balance(user_a, "TUSD:31337") == 0
    assert JournalEntry.all_tenants.filter(tenant=tenant_a, kind=JournalEntry.Kind.REVERSAL).count() == 2
    assert ledger_verify(tenant=tenant_a).ok
    # Nothing is credited again on later ticks.
    node.mine(5)
    watcher_run_until_idle(chain, watcher=watcher)
    assert balance(user_a, "ETH:31337") == 0 and len(deposit_entries(tenant_a)) == 2


def test_snapshot_revert_shortens_the_chain_and_a_reincluded_deposit_credits_again(
        chain_env: ChainEnv, tenant_a: Tenant, user_a: User) -> None:
    node, chain = chain_env.anvil, chain_env.chain
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    snapshot = node.rpc("evm_snapshot")
    first = node.send(chain_env.funder, linked, 10**18)
    node.mine(5)
    watcher = ChainWatcher(chain)
    watcher_run_until_idle(chain, watcher=watcher)
    assert balance(user_a, "ETH:31337") == 10**18

    assert node.rpc("evm_revert", snapshot) is True  # the chain is shorter now, and the deposit gone
    other = node.send(chain_env.funder, linked, 3 * 10**18)  # a different deposit on the new branch
    node.mine(3)
    watcher_run_until_idle(chain, watcher=watcher)
    rows = {d.tx_hash: d for d in Deposit.all_tenants.filter(tenant=tenant_a)}
    assert rows[first].status == Deposit.Status.REORGED and rows[first].reversal_id
    assert rows[other].status == Deposit.Status.FINAL
    assert balance(user_a, "ETH:31337") == 3 * 10**18
    assert ledger_verify(tenant=tenant_a).ok


def test_watcher_killed_mid_range_resumes_without_gap_or_double_credit(
        chain_env: ChainEnv, tenant_a: Tenant, user_a: User) -> None:
    node, chain = chain_env.anvil, chain_env.chain
    chain.log_chunk_blocks = 10
    chain.save()
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    sent = []
    for _ in range(8):  # deposits spread over ~56 blocks
        sent.append(node.send(chain_env.funder, linked, 10**15))
        sent.append(chain_env.mint(linked, 1_000))
        node.mine(6)

    class Killed(Exception):
        pass

    chunks: list[int] = []

    def die_on_third_chunk(end: int) -> None:
        chunks.append(end)
        if len(chunks) == 3:
            raise Killed()

    first = ChainWatcher(chain)
    first.after_chunk = die_on_third_chunk
    with pytest.raises(Killed):
        first.tick()
    cursor = ChainCursor.objects.get(chain=chain).block_number
    assert cursor == chunks[-1]  # the third chunk had committed before the "kill"
    seen_before = Deposit.all_tenants.filter(tenant=tenant_a).count()
    assert 0 < seen_before < len(sent)

    watcher_run_until_idle(chain, watcher=ChainWatcher(chain))  # a new process, from the cursor
    rows = list(Deposit.all_tenants.filter(tenant=tenant_a))
    assert sorted(d.tx_hash for d in rows) == sorted(sent)
    assert {d.status for d in rows} == {Deposit.Status.FINAL}
    assert len(deposit_entries(tenant_a)) == len(sent)
    assert balance(user_a, "ETH:31337") == 8 * 10**15 and balance(user_a, "TUSD:31337") == 8_000
    assert ledger_verify(tenant=tenant_a).ok


def test_stale_head_raises_the_alarm_once_and_clears_when_the_chain_moves(
        chain_env: ChainEnv, caplog: Any) -> None:
    chain = chain_env.chain
    chain.stale_after_seconds = 0
    chain.save()
    watcher = ChainWatcher(chain)
    before = metrics.value("chains_stale_head_alarms_total", chain_id=31337)
    watcher.tick()
    watcher.tick()
    watcher.tick()
    assert metrics.value("chains_stale_head_alarms_total", chain_id=31337) == before + 1
    assert any(r.getMessage() == "chain head is stale" for r in caplog.records)
    chain_env.anvil.mine(1)
    watcher.tick()
    assert watcher.stale_alarmed is False


def test_a_token_the_tenant_does_not_offer_is_not_a_deposit(chain_env: ChainEnv, tenant_a: Tenant,
                                                            user_a: User) -> None:
    from wallet.ledger.models import TenantAsset

    node, chain = chain_env.anvil, chain_env.chain
    TenantAsset.all_tenants.filter(tenant=tenant_a, asset=chain_env.token.asset).update(enabled=False)
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    native = node.send(chain_env.funder, linked, 10**18)
    chain_env.mint(linked, 5_000_000)
    node.mine(3)
    watcher_run_until_idle(chain)
    assert list(Deposit.all_tenants.filter(tenant=tenant_a).values_list("tx_hash", flat=True)) == [native]
    assert balance(user_a, "TUSD:31337") == 0 and balance(user_a, "ETH:31337") == 10**18


@pytest.mark.parametrize("spent", [6 * 10**17, 10**18])
def test_reorg_of_a_credited_deposit_the_user_already_spent_debits_the_shortfall_to_suspense(
        chain_env: ChainEnv, tenant_a: Tenant, user_a: User, spent: int) -> None:
    """The reversal cannot take back what the user spent: it takes what the account holds and debits the rest
    to the tenant's suspense account (a receivable, reported); nothing goes below zero that may not."""
    from tests.factories import UserFactory
    from wallet.ledger.services import transfer_create

    node, chain = chain_env.anvil, chain_env.chain
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    tx = node.send(chain_env.funder, linked, 10**18)
    node.mine(4)
    watcher = ChainWatcher(chain)
    watcher_run_until_idle(chain, watcher=watcher)
    assert balance(user_a, "ETH:31337") == 10**18
    friend = UserFactory(tenant=tenant_a)
    transfer_create(tenant=tenant_a, sender=user_a, recipient=friend, asset=chain.native_asset, amount=spent)
    before = metrics.value("chains_reversal_shortfalls_total", chain_id=31337)

    node.rpc("anvil_reorg", 6, [])
    watcher_run_until_idle(chain, watcher=watcher)
    deposit = Deposit.all_tenants.get(tenant=tenant_a, tx_hash=tx)
    assert deposit.status == Deposit.Status.REORGED and deposit.reversal.reverses_id == deposit.entry_id
    assert deposit.shortfall == spent
    assert balance(user_a, "ETH:31337") == 0 and balance(friend, "ETH:31337") == spent
    suspense = Account.all_tenants.get(tenant=tenant_a, kind=Account.Kind.SUSPENSE, rail="chain:31337",
                                       asset=chain.native_asset)
    assert int(suspense.posted) == -spent
    assert metrics.value("chains_reversal_shortfalls_total", chain_id=31337) == before + 1
    reorged = [e for e in deposit_events(user_a) if e[0] == "deposit.reorged"]
    assert reorged == [("deposit.reorged", tx, "reorged")]
    assert ledger_verify(tenant=tenant_a).ok


def test_a_spent_deposit_that_comes_back_after_a_reorg_repays_the_suspense_account_first(
        chain_env: ChainEnv, tenant_a: Tenant, user_a: User) -> None:
    from tests.factories import UserFactory
    from wallet.ledger.services import transfer_create

    node, chain = chain_env.anvil, chain_env.chain
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    tx = node.send(chain_env.funder, linked, 10**18)
    raw = node.rpc("eth_getRawTransactionByHash", tx)
    node.mine(4)
    watcher = ChainWatcher(chain)
    watcher_run_until_idle(chain, watcher=watcher)
    friend = UserFactory(tenant=tenant_a)
    transfer_create(tenant=tenant_a, sender=user_a, recipient=friend, asset=chain.native_asset, amount=7 * 10**17)

    before = metrics.value("chains_reversal_shortfalls_total", chain_id=31337)
    node.rpc("anvil_reorg", 5, [[raw, 0]])  # the same transaction, again at its height on the new branch
    watcher_run_until_idle(chain, watcher=watcher)  # reversed (with a shortfall), seen again, final again
    deposit = Deposit.all_tenants.get(tenant=tenant_a, tx_hash=tx)
    assert metrics.value("chains_reversal_shortfalls_total", chain_id=31337) == before + 1
    assert JournalEntry.all_tenants.filter(tenant=tenant_a, kind=JournalEntry.Kind.REVERSAL).count() == 1
    assert deposit.status == Deposit.Status.FINAL and deposit.shortfall == 0
    assert [t for t, h, _ in deposit_events(user_a) if h == tx][-3:] == ["deposit.reorged", "deposit.seen",
                                                                        "deposit.final"]
    suspense = Account.all_tenants.get(tenant=tenant_a, kind=Account.Kind.SUSPENSE, rail="chain:31337",
                                       asset=chain.native_asset)
    assert int(suspense.posted) == 0  # the new credit repaid the suspense account first
    assert balance(user_a, "ETH:31337") == 3 * 10**17  # what they would hold had the reorg never happened
    assert ledger_verify(tenant=tenant_a).ok
