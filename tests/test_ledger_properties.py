"""Property-based: random sequences of transfers, holds, posts, voids and reversals keep every invariant."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenants.models import Tenant
from tests.factories import UserFactory
from tests.ledger_helpers import account, enable
from wallet.core.errors import ApiError
from wallet.ledger import services
from wallet.ledger.models import Account, Hold, JournalEntry
from wallet.ledger.verify import ledger_verify

USERS = 4
amounts = st.integers(min_value=1, max_value=2_000)
operation = st.one_of(
    st.tuples(st.just("fund"), st.integers(0, USERS - 1), amounts),
    st.tuples(st.just("transfer"), st.integers(0, USERS - 1), st.integers(0, USERS - 1), amounts),
    st.tuples(st.just("hold"), st.integers(0, USERS - 1), amounts),
    st.tuples(st.just("post"), st.integers(0, 50), amounts),
    st.tuples(st.just("void"), st.integers(0, 50)),
    st.tuples(st.just("reverse"), st.integers(0, 200)),
)


@pytest.fixture
def world(tenant_a: Tenant):
    usd = enable(tenant_a, "USD")
    users = [UserFactory(tenant=tenant_a, email=f"p{i}@example.com") for i in range(USERS)]
    settlement = services.system_account(tenant=tenant_a, asset=usd, kind=Account.Kind.SETTLEMENT)
    return {"tenant": tenant_a, "usd": usd, "users": users, "settlement": settlement}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=25))
def test_random_operations_keep_the_ledger_consistent(world, ops) -> None:
    tenant, usd, users = world["tenant"], world["usd"], world["users"]
    for op in ops:
        try:
            if op[0] == "fund":
                services.sandbox_fund(tenant=tenant, user=users[op[1]], asset=usd, amount=op[2])
            elif op[0] == "transfer":
                services.transfer_create(tenant=tenant, sender=users[op[1]], recipient=users[op[2]], asset=usd,
                                         amount=op[3])
            elif op[0] == "hold":
                services.hold_place(tenant=tenant, account=account(users[op[1]]), amount=op[2])
            elif op[0] in ("post", "void"):
                holds = list(Hold.all_tenants.filter(tenant=tenant).order_by("created_at"))
                if not holds:
                    continue
                hold = holds[op[1] % len(holds)]
                if op[0] == "post":
                    services.hold_post(tenant=tenant, hold=hold, amount=op[2], destination=world["settlement"])
                else:
                    services.hold_void(tenant=tenant, hold=hold)
            elif op[0] == "reverse":
                entries = list(JournalEntry.all_tenants.filter(tenant=tenant).order_by("seq"))
                if entries:
                    services.entry_reverse(tenant=tenant, entry=entries[op[1] % len(entries)], requested_by=None)
        except ApiError:
            pass  # refusals are expected; they must leave no trace, which the checks below prove
    report = ledger_verify(tenant=tenant)
    assert report.ok, report.problems
    for row in Account.all_tenants.filter(tenant=tenant, allow_negative=False):
        assert row.posted - row.held >= 0
        assert row.held >= 0
