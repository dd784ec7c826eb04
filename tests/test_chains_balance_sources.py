"""On-chain balances in GET /api/v1/balances (chains.balance_sources plugged into wallet.balances)."""

from __future__ import annotations

import pytest

from chains.balance_sources import chain_balance_sources
from chains.clients import clients_reset
from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.factories import UserFactory
from tests.fixtures.chains import fixtures
from tests.fixtures.chains.fixtures import ChainEnv
from tests.fixtures.chains.helpers import link_address, new_account
from wallet.balances.sources import source_factories

anvil, chain_env = fixtures.anvil, fixtures.chain_env


def test_the_chains_factory_is_registered() -> None:
    assert source_factories().get("chains") is chain_balance_sources


@pytest.mark.anvil
def test_linked_addresses_show_their_native_and_token_balances(chain_env: ChainEnv, client_a: AppClient,
                                                               user_a: User, tenant_a: Tenant) -> None:
    node = chain_env.anvil
    wallet = link_address(tenant_a, user_a, new_account(), 31337)
    node.send(chain_env.funder, wallet.address, 5 * 10**17)
    chain_env.mint(wallet.address, 2**40)
    node.mine(1)
    # someone else's address in the same tenant is not a source of user_a
    link_address(tenant_a, UserFactory(tenant=tenant_a), new_account(), 31337)

    sources = chain_balance_sources(tenant_a, user_a)
    assert [s.id for s in sources] == [f"chain:31337:{wallet.address.lower()}"]

    client_a.login_as(user_a)
    body = client_a.get("/api/v1/balances").json()
    chain_sources = [s for s in body["sources"] if s["kind"] == "chain"]
    assert len(chain_sources) == 1
    source = chain_sources[0]
    assert source["status"] == "fresh", source
    amounts = {e["asset"]: (e["amount"], e["decimals"]) for e in source["entries"]}
    assert amounts == {"ETH:31337": (str(5 * 10**17), 18), "TUSD:31337": (str(2**40), 6)}
    assert all(e["details"]["block_number"] == node.block_number() for e in source["entries"])


@pytest.mark.anvil
def test_a_dead_node_makes_the_source_unavailable_not_the_endpoint(chain_env: ChainEnv, client_a: AppClient,
                                                                   user_a: User, tenant_a: Tenant) -> None:
    link_address(tenant_a, user_a, new_account(), 31337)
    chain_env.chain.rpc_urls = ["http://127.0.0.1:9"]  # nothing listens there
    chain_env.chain.save()
    clients_reset()
    client_a.login_as(user_a)
    response = client_a.get("/api/v1/balances")
    assert response.status_code == 200
    source = next(s for s in response.json()["sources"] if s["kind"] == "chain")
    assert source["status"] in ("unavailable", "stale") and source["error"]
    ledger = next(s for s in response.json()["sources"] if s["kind"] == "ledger")
    assert ledger["status"] == "fresh"
