"""The RPC client against anvil behind a switchable proxy: failover to the secondary and back to the primary,
the watcher carrying on through it, batching, and `eth_getLogs` range splitting on -32005."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from chains.models import Deposit
from chains.rpc import RpcClient, RpcResponseError, RpcUnavailable, is_unsupported
from chains.watcher import ChainWatcher, watcher_run_until_idle
from tenants.models import Tenant, User
from tests.fixtures.chains import fixtures
from tests.fixtures.chains.fixtures import chain_env_for
from tests.fixtures.chains.helpers import Anvil, RpcProxy, link_address, new_account

pytestmark = pytest.mark.anvil
anvil = fixtures.anvil


def wait_for_retry(client: RpcClient) -> None:
    """Until every URL's back-off has passed (it doubles with each failure; a loaded machine fails more)."""
    time.sleep(max(0.0, max(e.down_until for e in client.endpoints) - time.monotonic()) + 0.05)


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[RpcProxy]:
    server = RpcProxy(anvil.url)
    yield server
    server.stop()


def test_batch_returns_results_in_order_and_errors_in_place(anvil: Anvil) -> None:
    client = RpcClient([anvil.url])
    anvil.mine(3)
    results = client.batch([("eth_blockNumber", []), ("eth_getBlockByNumber", ["0x2", False]),
                            ("no_such_method", [])], raise_errors=False)
    assert results[0] == hex(anvil.block_number()) and results[1]["number"] == "0x2"
    assert isinstance(results[2], RpcResponseError)
    assert client.stats.batches == 1


def test_failover_to_the_secondary_and_back_to_the_primary(anvil: Anvil, proxy: RpcProxy) -> None:
    client = RpcClient([proxy.url, anvil.url], backoff=0.2, max_backoff=1.0, retries=0)
    assert client.call("eth_chainId") == "0x7a69"
    assert client.stats.by_url == {proxy.url: 1}

    proxy.state.failing = True  # the primary dies
    for _ in range(3):
        assert client.call("eth_chainId") == "0x7a69"
    assert client.stats.by_url[anvil.url] == 3 and client.stats.failovers >= 1
    assert client.current_url == anvil.url  # while the primary is marked down, the secondary is first

    proxy.state.failing = False  # it recovers; once its back-off has passed it is tried first again
    wait_for_retry(client)
    assert client.call("eth_chainId") == "0x7a69"
    assert client.current_url == proxy.url and client.stats.by_url[proxy.url] == 2


def test_every_url_down_raises_unavailable(proxy: RpcProxy) -> None:
    proxy.state.failing = True
    client = RpcClient([proxy.url, "http://127.0.0.1:9"], backoff=0.01, retries=1)
    with pytest.raises(RpcUnavailable):
        client.call("eth_chainId")


def test_get_logs_splits_a_range_the_node_calls_too_large(anvil: Anvil, proxy: RpcProxy) -> None:
    funder = anvil.accounts()[0]
    token = anvil.deploy("TestToken", "T", "T", 18)
    from tests.fixtures.chains.helpers import call_data

    for i in range(6):
        anvil.send(funder, token, data=call_data("TestToken", "mint", funder, i + 1))
        anvil.mine(3)
    proxy.state.max_log_range = 5
    client = RpcClient([proxy.url])
    logs = client.get_logs(from_block=0, to_block=anvil.block_number(), address=token)
    assert [int(entry["data"], 16) for entry in logs] == [1, 2, 3, 4, 5, 6]
    assert client.stats.splits >= 3 and proxy.state.refused_ranges


def test_http_timeout_is_a_failover_not_a_hang() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("too slow", request=request)

    client = RpcClient(["http://primary.invalid", "http://secondary.invalid"], retries=0,
                       transport=httpx.MockTransport(lambda r: slow(r) if "primary" in str(r.url) else
                                                     httpx.Response(200, json={"jsonrpc": "2.0", "id": 1,
                                                                               "result": "0x1"})))
    assert client.call("eth_chainId") == "0x1"
    assert client.stats.failovers == 1


@pytest.mark.django_db
def test_watcher_carries_on_from_the_secondary_and_returns(anvil: Anvil, proxy: RpcProxy, tenant_a: Tenant,
                                                          user_a: User, settings: object) -> None:
    env = chain_env_for(anvil, tenant_a)
    env.chain.rpc_urls = [proxy.url, anvil.url]
    env.chain.save()
    linked = link_address(tenant_a, user_a, new_account(), 31337).address
    client = RpcClient(env.chain.rpc_urls, backoff=0.2, max_backoff=1.0, retries=0)
    watcher = ChainWatcher(env.chain, client=client)

    anvil.send(env.funder, linked, 10**18)
    watcher_run_until_idle(env.chain, watcher=watcher)
    proxy.state.failing = True
    second = anvil.send(env.funder, linked, 2 * 10**18)
    anvil.mine(3)
    watcher_run_until_idle(env.chain, watcher=watcher)
    assert Deposit.all_tenants.get(tx_hash=second).status == Deposit.Status.FINAL
    assert client.stats.by_url.get(anvil.url, 0) > 0

    proxy.state.failing = False
    wait_for_retry(client)
    before = client.stats.by_url.get(proxy.url, 0)
    anvil.mine(1)
    watcher.tick()
    assert client.stats.by_url[proxy.url] > before and client.current_url == proxy.url
    assert Deposit.all_tenants.filter(tenant=tenant_a, status=Deposit.Status.FINAL).count() == 2


def test_trace_filter_learns_the_nodes_range_limit_and_asks_for_sub_ranges_in_one_batch(anvil: Anvil) -> None:
    """anvil answers trace_filter over more than 300 blocks with "block range too large, currently limited to
    300": the client learns the span once and covers the range with sub-ranges in one JSON-RPC batch."""
    funder, target = anvil.accounts()[0], new_account().address.lower()
    anvil.mine(400)
    first = anvil.send(funder, target, 10**15)
    anvil.mine(300)
    second = anvil.send(funder, target, 2 * 10**15)
    client = RpcClient([anvil.url], retries=0)
    traces = client.trace_filter(from_block=1, to_block=anvil.block_number(), to_addresses=[target])
    assert [t["transactionHash"] for t in traces] == [first, second]
    assert client.trace_span == 300 and client.stats.splits == 1
    batches = client.stats.batches
    assert [t["transactionHash"] for t in client.trace_filter(from_block=1, to_block=anvil.block_number(),
                                                              from_addresses=[target])] == []
    assert client.stats.batches == batches + 1  # the learned span: one batch, no refusal
    with pytest.raises(RpcResponseError) as refused:
        client.call("trace_no_such_method", [])
    assert is_unsupported(refused.value)  # what makes `auto` fall back to block bodies
    client.close()
