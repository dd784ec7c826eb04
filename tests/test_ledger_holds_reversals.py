"""Holds (place, post partially or fully, void, expire) and reversals."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tenants.models import Tenant, User
from tests.factories import UserFactory
from tests.ledger_helpers import account, balance, enable, fund
from wallet.ledger import services
from wallet.ledger.errors import AlreadyReversed, HoldAmountExceeded, HoldNotActive, InsufficientFunds, NotReversible
from wallet.ledger.models import Account, Hold, JournalEntry, Transfer
from wallet.ledger.tasks import expire_holds
from wallet.ledger.verify import ledger_verify


@pytest.fixture
def usd(tenant_a: Tenant):
    return enable(tenant_a, "USD")


@pytest.fixture
def settlement(tenant_a: Tenant, usd) -> Account:
    return services.system_account(tenant=tenant_a, asset=usd, kind=Account.Kind.SETTLEMENT)


def test_hold_reduces_available_not_posted(tenant_a: Tenant, user_a: User, usd) -> None:
    fund(user_a, 1_000)
    hold = services.hold_place(tenant=tenant_a, account=account(user_a), amount=400)
    assert balance(user_a) == (1_000, 400, 600)
    assert (hold.amount, hold.remaining, hold.status) == (400, 400, "active")
    with pytest.raises(InsufficientFunds):
        services.hold_place(tenant=tenant_a, account=account(user_a), amount=601)
    assert balance(user_a) == (1_000, 400, 600)


def test_post_partially_then_fully(tenant_a: Tenant, user_a: User, usd, settlement: Account) -> None:
    fund(user_a, 1_000)
    hold = services.hold_place(tenant=tenant_a, account=account(user_a), amount=400)
    services.hold_post(tenant=tenant_a, hold=hold, amount=150, destination=settlement)
    assert balance(user_a) == (850, 250, 600)
    assert (hold.remaining, hold.status) == (250, "active")
    with pytest.raises(HoldAmountExceeded):
        services.hold_post(tenant=tenant_a, hold=hold, amount=251, destination=settlement)
    services.hold_post(tenant=tenant_a, hold=hold, amount=250, destination=settlement)
    assert balance(user_a) == (600, 0, 600)
    assert Hold.all_tenants.get(pk=hold.pk).status == "posted"
    with pytest.raises(HoldNotActive):
        services.hold_void(tenant=tenant_a, hold=hold)
    assert Account.all_tenants.get(pk=settlement.pk).posted == 400
    assert ledger_verify(tenant=tenant_a).ok


def test_void_releases_what_remains(tenant_a: Tenant, user_a: User, usd, settlement: Account) -> None:
    fund(user_a, 1_000)
    hold = services.hold_place(tenant=tenant_a, account=account(user_a), amount=400)
    services.hold_post(tenant=tenant_a, hold=hold, amount=100, destination=settlement)
    services.hold_void(tenant=tenant_a, hold=hold)
    assert balance(user_a) == (900, 0, 900)
    assert Hold.all_tenants.get(pk=hold.pk).status == "voided"
    assert ledger_verify(tenant=tenant_a).ok


def test_expired_holds_are_voided_by_the_scheduled_task(tenant_a: Tenant, user_a: User, usd) -> None:
    fund(user_a, 1_000)
    past = services.hold_place(tenant=tenant_a, account=account(user_a), amount=100,
                               expires_at=timezone.now() - timedelta(seconds=1))
    future = services.hold_place(tenant=tenant_a, account=account(user_a), amount=200,
                                 expires_at=timezone.now() + timedelta(hours=1))
    assert expire_holds.apply(kwargs={"tenant_id": str(tenant_a.pk)}).get() == 1
    assert Hold.all_tenants.get(pk=past.pk).status == "expired"
    assert Hold.all_tenants.get(pk=future.pk).status == "active"
    assert balance(user_a) == (1_000, 200, 800)
    assert expire_holds.apply(kwargs={"tenant_id": str(tenant_a.pk)}).get() == 0  # safe to run twice


def test_reversal_is_linked_and_restores_balances(tenant_a: Tenant, user_a: User, usd, owner_a: User) -> None:
    bob = UserFactory(tenant=tenant_a, email="bob@example.com")
    fund(user_a, 1_000)
    transfer = services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=300)
    reversal = services.entry_reverse(tenant=tenant_a, entry=transfer.entry, requested_by=owner_a)
    assert reversal.reverses_id == transfer.entry_id
    assert reversal.requested_by_id == owner_a.pk
    assert balance(user_a) == (1_000, 0, 1_000) and balance(bob) == (0, 0, 0)
    assert Transfer.all_tenants.get(pk=transfer.pk).status == "reversed"
    with pytest.raises(AlreadyReversed):
        services.entry_reverse(tenant=tenant_a, entry=transfer.entry, requested_by=owner_a)
    with pytest.raises(NotReversible):
        services.entry_reverse(tenant=tenant_a, entry=reversal, requested_by=owner_a)
    assert ledger_verify(tenant=tenant_a).ok


def test_reversal_that_would_overdraw_is_refused(tenant_a: Tenant, user_a: User, usd) -> None:
    bob = UserFactory(tenant=tenant_a, email="bob@example.com")
    carol = UserFactory(tenant=tenant_a, email="carol@example.com")
    fund(user_a, 1_000)
    transfer = services.transfer_create(tenant=tenant_a, sender=user_a, recipient=bob, asset=usd, amount=300)
    services.transfer_create(tenant=tenant_a, sender=bob, recipient=carol, asset=usd, amount=300)
    with pytest.raises(InsufficientFunds):
        services.entry_reverse(tenant=tenant_a, entry=transfer.entry, requested_by=None)
    assert not JournalEntry.all_tenants.filter(kind="reversal").exists()
