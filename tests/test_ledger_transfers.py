"""P2P transfers through the service: balances, refusals, limits, events."""

from __future__ import annotations

import pytest

from tenants.models import Tenant, User
from tests.factories import UserFactory
from tests.ledger_helpers import asset, balance, enable, fund
from wallet.core.context import all_tenants_scope
from wallet.events.models import OutboxEvent
from wallet.ledger import services
from wallet.ledger.errors import (
    AssetNotEnabled,
    DailyLimitExceeded,
    InsufficientFunds,
    RecipientIsSender,
    TransferLimitExceeded,
)
from wallet.ledger.models import JournalEntry, Posting, Transfer
from wallet.ledger.verify import ledger_verify


@pytest.fixture
def bob(tenant_a: Tenant) -> User:
    return UserFactory(tenant=tenant_a, email="bob@example.com")


@pytest.fixture
def usd(tenant_a: Tenant):
    return enable(tenant_a, "USD")


def test_transfer_moves_money_in_one_balanced_entry(tenant_a: Tenant, user_a: User, bob: User, usd) -> None:
    fund(user_a, 10_000)
    transfer = services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=2_500,
                                        memo="lunch")
    assert balance(user_a) == (7_500, 0, 7_500)
    assert balance(bob) == (2_500, 0, 2_500)
    entry = transfer.entry
    assert entry.kind == JournalEntry.Kind.TRANSFER and entry.memo == "lunch"
    assert sorted(p.amount for p in Posting.all_tenants.filter(entry=entry)) == [-2_500, 2_500]
    assert ledger_verify(tenant=tenant_a).ok


def test_insufficient_funds_changes_nothing(tenant_a: Tenant, user_a: User, bob: User, usd) -> None:
    fund(user_a, 1_000)
    entries_before = JournalEntry.all_tenants.count()
    with pytest.raises(InsufficientFunds) as caught:
        services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=1_001)
    assert caught.value.extra["available"] == "1000"
    assert caught.value.extra["requested"] == "1001"
    assert balance(user_a) == (1_000, 0, 1_000)
    assert balance(bob) == (0, 0, 0)
    assert JournalEntry.all_tenants.count() == entries_before
    assert not Transfer.all_tenants.exists()


def test_refusals_have_distinct_codes(tenant_a: Tenant, user_a: User, bob: User) -> None:
    usd = enable(tenant_a, "USD", max_per_transfer=500, daily_limit=800)
    fund(user_a, 10_000)
    with pytest.raises(RecipientIsSender):
        services.transfer_create(tenant=tenant_a, sender=user_a, recipient=user_a, asset=usd, amount=1)
    with pytest.raises(TransferLimitExceeded):
        services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=501)
    services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=500)
    with pytest.raises(DailyLimitExceeded) as caught:
        services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=301)
    assert caught.value.extra["remaining"] == "300"
    services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=300)
    with pytest.raises(AssetNotEnabled):
        services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=asset("EUR"), amount=1)
    assert balance(bob) == (800, 0, 800)


def test_a_batch_refuses_some_and_commits_the_rest(tenant_a: Tenant, user_a: User, bob: User, usd) -> None:
    fund(user_a, 300)
    requests = [services.TransferRequest(user_a, bob, usd, 200), services.TransferRequest(user_a, bob, usd, 200),
                services.TransferRequest(bob, user_a, usd, 50), services.TransferRequest(user_a, bob, usd, 150)]
    results = services.transfers_execute(tenant=tenant_a, requests=requests)
    assert [type(r).__name__ for r in results] == ["Transfer", "InsufficientFunds", "Transfer", "Transfer"]
    assert balance(user_a) == (0, 0, 0)
    assert balance(bob) == (300, 0, 300)
    assert ledger_verify(tenant=tenant_a).ok


def test_transfer_writes_events_to_both_users_streams(tenant_a: Tenant, user_a: User, bob: User, usd) -> None:
    fund(user_a, 1_000)
    transfer = services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=100)
    with all_tenants_scope():
        events = list(OutboxEvent.objects.order_by("stream", "seq").values_list("stream", "seq", "type"))
    alice, bob_stream = f"user:{user_a.pk.hex}", f"user:{bob.pk.hex}"
    assert (alice, 2, "account.balance_changed") in events  # 1 was the funding
    assert (alice, 3, "transfer.completed") in events
    assert (bob_stream, 1, "account.balance_changed") in events
    assert (bob_stream, 2, "transfer.completed") in events
    with all_tenants_scope():
        completed = OutboxEvent.objects.get(stream=bob_stream, type="transfer.completed")
    assert completed.data["id"] == str(transfer.pk)
    assert completed.data["direction"] == "in"
    assert completed.data["amount"] == "100" and completed.data["decimals"] == 2


def test_huge_amounts_stay_exact(tenant_a: Tenant, user_a: User, bob: User) -> None:
    eth = enable(tenant_a, "ETH")
    amount = 2**200 + 12345
    fund(user_a, amount, "ETH")
    services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=eth, amount=2**199 + 1)
    assert balance(user_a, "ETH")[0] == 2**200 + 12345 - 2**199 - 1
    assert balance(bob, "ETH")[0] == 2**199 + 1
    assert ledger_verify(tenant=tenant_a).ok


def test_ledgers_of_tenants_are_separate_chains(tenant_a: Tenant, tenant_b: Tenant, user_a: User, bob: User,
                                               user_b: User, usd) -> None:
    enable(tenant_b, "USD")
    fund(user_a, 100)
    fund(user_b, 100)
    services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=10)
    seqs_a = JournalEntry.all_tenants.filter(tenant=tenant_a).order_by("seq").values_list("seq", flat=True)
    assert list(seqs_a) == [1, 2]
    assert list(JournalEntry.all_tenants.filter(tenant=tenant_b).values_list("seq", flat=True)) == [1]
    assert ledger_verify(tenant=tenant_a).ok and ledger_verify(tenant=tenant_b).ok
