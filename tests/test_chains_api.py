"""Chains API: enabled chains, deposit addresses from the tenant's xpub, deposits, on-chain balances (batched
JSON-RPC and Multicall3), and the registry's admin."""

from __future__ import annotations

import uuid

import pytest
from bip32 import BIP32

from chains.derivation import derive_address, pubkey_to_address
from chains.models import AddressBalance, DepositAddress
from chains.services import chain_register, tenant_chain_enable
from chains.watcher import watcher_run_until_idle
from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.factories import UserFactory
from tests.fixtures.chains import fixtures
from tests.fixtures.chains.fixtures import SEED, XPUB, ChainEnv
from tests.fixtures.chains.helpers import link_address, new_account

pytestmark = pytest.mark.django_db
anvil, chain_env = fixtures.anvil, fixtures.chain_env


def test_public_derivation_matches_the_private_keys_addresses() -> None:
    root = BIP32.from_seed(SEED)
    for index in (0, 1, 7):
        from_private = pubkey_to_address(root.get_pubkey_from_path(f"m/44'/60'/0'/0/{index}"))
        assert derive_address(XPUB, index) == from_private
    assert derive_address(XPUB, 0) != derive_address(XPUB, 1)


def test_deposit_address_is_one_per_user_per_chain(client_a: AppClient, user_a: User, tenant_a: Tenant) -> None:
    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=XPUB)
    client_a.login_as(user_a)
    first = client_a.post("/api/v1/chains/31337/deposit-address", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)
    again = client_a.post("/api/v1/chains/31337/deposit-address", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)
    assert first.status_code == 200 and again.json() == first.json()
    assert first.json()["address"] == derive_address(XPUB, 0)
    other = UserFactory(tenant=tenant_a, email="erin@example.com")
    client_a.login_as(other)
    theirs = client_a.post("/api/v1/chains/31337/deposit-address", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex).json()
    assert theirs["address"] == derive_address(XPUB, 1)
    assert DepositAddress.all_tenants.count() == 2
    assert [a["address"] for a in client_a.get("/api/v1/deposit-addresses").json()["results"]] == [theirs["address"]]


def test_no_xpub_no_deposit_addresses(client_a: AppClient, user_a: User, tenant_a: Tenant) -> None:
    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain)
    client_a.login_as(user_a)
    response = client_a.post("/api/v1/chains/31337/deposit-address", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)
    assert response.status_code == 409 and response.json()["code"] == "deposit_addresses_disabled"


def test_an_xpriv_is_refused_as_deposit_key(tenant_a: Tenant) -> None:
    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    with pytest.raises(Exception) as refused:
        tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=BIP32.from_seed(SEED).get_xpriv())
    assert getattr(refused.value, "code", "") == "invalid_xpub"


@pytest.mark.anvil
def test_chains_deposits_and_balances(chain_env: ChainEnv, client_a: AppClient, user_a: User,
                                      tenant_a: Tenant) -> None:
    node = chain_env.anvil
    client_a.login_as(user_a)
    chains = client_a.get("/api/v1/chains").json()["results"]
    assert chains == [{"chain_id": 31337, "name": "anvil", "confirmations": 3, "native_asset": "ETH:31337",
                       "deposit_addresses": True, "tokens": [{"contract": chain_env.token.contract,
                                                              "symbol": "TUSD", "decimals": 6,
                                                              "asset": "TUSD:31337"}]}]

    account = new_account()
    wallet = link_address(tenant_a, user_a, account, 31337)
    node.send(chain_env.funder, wallet.address, 5 * 10**17)
    chain_env.mint(wallet.address, 1_234_567)
    node.mine(3)
    watcher_run_until_idle(chain_env.chain)
    deposits = client_a.get("/api/v1/deposits").json()["results"]
    assert {(d["asset"], d["amount"], d["status"]) for d in deposits} == {("ETH:31337", str(5 * 10**17), "final"),
                                                                          ("TUSD:31337", "1234567", "final")}
    detail = client_a.get(f"/api/v1/deposits/{deposits[0]['id']}").json()
    assert detail["entry_id"] and detail["decimals"] in (6, 18)

    balances = client_a.get(f"/api/v1/wallets/{wallet.pk}/balances").json()
    by_asset = {b["asset"]: b for b in balances["results"]}
    assert by_asset["ETH:31337"]["amount"] == str(5 * 10**17)
    assert by_asset["TUSD:31337"]["amount"] == "1234567" and by_asset["TUSD:31337"]["decimals"] == 6
    assert by_asset["ETH:31337"]["block_number"] == node.block_number()

    # Cached with the block it was read at; Multicall3 (where deployed) gives the same answer in one call.
    chain_env.mint(wallet.address, 1)
    cached = client_a.get(f"/api/v1/wallets/{wallet.pk}/balances").json()
    assert {b["asset"]: b["amount"] for b in cached["results"]}["TUSD:31337"] == "1234567"
    AddressBalance.objects.all().delete()
    chain_env.chain.multicall3_address = node.deploy("Multicall3Lite")
    chain_env.chain.save()
    fresh = client_a.get(f"/api/v1/wallets/{wallet.pk}/balances").json()
    assert {b["asset"]: b["amount"] for b in fresh["results"]} == {"ETH:31337": str(5 * 10**17),
                                                                   "TUSD:31337": "1234568"}


def test_registry_admin_is_for_superusers_and_tenant_rows_are_scoped(client: object, superuser: User,
                                                                     owner_a: User, tenant_a: Tenant,
                                                                     tenant_b: Tenant) -> None:
    from django.test import Client

    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain)
    tenant_chain_enable(tenant=tenant_b, chain=chain)
    browser = Client()
    browser.force_login(superuser)
    assert browser.get(f"/admin/chains/chain/{chain.pk}/change/").status_code == 200
    owner = Client()
    owner.force_login(owner_a)
    assert owner.get("/admin/chains/chain/").status_code == 200
    page = owner.get(f"/admin/chains/chain/{chain.pk}/change/")
    assert page.status_code == 200 and b'name="name"' not in page.content  # read-only for tenant staff
    listing = owner.get("/admin/chains/tenantchain/")
    assert listing.status_code == 200 and listing.context["cl"].result_count == 1


def test_the_tenant_chain_refuses_a_private_key_where_the_admin_writes_it(tenant_a: Tenant) -> None:
    """The model field validates, so an admin form cannot store an xprv (a private key) or garbage."""
    from django.core.exceptions import ValidationError

    from chains.models import TenantChain

    chain = chain_register(chain_id=999_001, name="validating", rpc_urls=["http://127.0.0.1:1"])
    row = TenantChain(tenant=tenant_a, chain=chain, deposit_xpub=BIP32.from_seed(SEED).get_xpriv())
    with pytest.raises(ValidationError, match="never a private key"):
        row.clean_fields()
    row.deposit_xpub = "xpub-not-a-key"
    with pytest.raises(ValidationError):
        row.clean_fields()
    row.deposit_xpub = XPUB
    row.clean_fields()
    row.deposit_xpub = ""
    row.clean_fields()


def test_two_tenants_cannot_derive_deposit_addresses_from_one_xpub(tenant_a: Tenant, tenant_b: Tenant) -> None:
    """The same xpub in two apps would derive the same addresses (a deposit would be both tenants'; the second
    tenant's first address used to fail on the address's uniqueness with a 500)."""
    from chains.errors import DepositXpubInUse
    from chains.models import TenantChain

    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    other_chain = chain_register(chain_id=999_002, name="other", rpc_urls=["http://127.0.0.1:1"])
    tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=XPUB)
    with pytest.raises(DepositXpubInUse) as refused:
        tenant_chain_enable(tenant=tenant_b, chain=chain, deposit_xpub=XPUB)
    assert refused.value.status == 409 and refused.value.code == "deposit_xpub_in_use"
    assert not TenantChain.all_tenants.filter(tenant=tenant_b, chain=chain).exists()
    tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=XPUB)  # its own again: fine
    tenant_chain_enable(tenant=tenant_b, chain=other_chain, deposit_xpub=XPUB)  # another chain: other addresses
    tenant_chain_enable(tenant=tenant_b, chain=chain)  # no xpub: fine
    tenant_chain_enable(tenant=tenant_b, chain=chain, deposit_xpub="")
    assert TenantChain.all_tenants.get(tenant=tenant_b, chain=chain).deposit_xpub == ""


def test_the_database_and_the_admin_refuse_a_second_tenant_on_the_same_xpub(tenant_a: Tenant, tenant_b: Tenant) -> None:
    from django.core.exceptions import ValidationError
    from django.db import IntegrityError, transaction

    from chains.models import TenantChain
    from wallet.core.context import tenant_scope

    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=XPUB)
    row = TenantChain(tenant=tenant_b, chain=chain, deposit_xpub=XPUB)
    with tenant_scope(tenant_b):  # as in tenant_b's admin, where tenant_a's row is out of scope
        with pytest.raises(ValidationError, match="already derives its deposit addresses"):
            row.full_clean()  # what the admin's form runs
        with pytest.raises(IntegrityError), transaction.atomic():
            row.save()
        row.deposit_xpub = ""
        row.full_clean()
        row.save()
    with tenant_scope(tenant_a):
        TenantChain.all_tenants.get(tenant=tenant_a, chain=chain).full_clean()  # its own row is no clash


def _reencoded(xpub: str) -> str:
    """The same key (chain code and public key) as a tpub at depth 0: other text, same addresses."""
    node = BIP32.from_xpub(xpub)
    return BIP32(node.chaincode, pubkey=node.pubkey, network="test").get_xpub()


def test_the_same_key_in_another_encoding_is_refused_too(tenant_a: Tenant, tenant_b: Tenant) -> None:
    from django.core.exceptions import ValidationError

    from chains.errors import DepositXpubInUse
    from chains.models import TenantChain
    from wallet.core.context import tenant_scope

    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=XPUB)
    tpub = _reencoded(XPUB)
    assert tpub != XPUB and tpub.startswith("tpub") and derive_address(tpub, 3) == derive_address(XPUB, 3)
    with pytest.raises(DepositXpubInUse):
        tenant_chain_enable(tenant=tenant_b, chain=chain, deposit_xpub=tpub)
    with tenant_scope(tenant_b), pytest.raises(ValidationError, match="already derives"):
        # as the staff admin's form validates it: `tenant` is not in the form, so it is excluded
        TenantChain(tenant=tenant_b, chain=chain, deposit_xpub=tpub).full_clean(exclude=["tenant"])


def test_a_racing_second_tenant_gets_the_409_from_the_constraint(tenant_a: Tenant, tenant_b: Tenant,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both pre-checks pass (the other row not committed yet): the unique constraint decides, and the loser is
    told why instead of a 500."""
    from chains import services
    from chains.errors import DepositXpubInUse

    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=XPUB)
    real, calls = services._xpub_taken, []

    def first_check_misses(*args: object) -> bool:
        calls.append(args)
        return False if len(calls) == 1 else real(*args)

    monkeypatch.setattr(services, "_xpub_taken", first_check_misses)
    with pytest.raises(DepositXpubInUse):
        tenant_chain_enable(tenant=tenant_b, chain=chain, deposit_xpub=XPUB)
    assert len(calls) == 2


def test_a_deposit_address_another_apps_key_derived_is_refused_not_a_500(
        client_b: AppClient, user_b: User, tenant_a: Tenant, tenant_b: Tenant, user_a: User) -> None:
    """A key shared before keys had to be distinct (stored directly here, as an old database would have it)."""
    from chains.models import TenantChain
    from chains.services import deposit_address_ensure

    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    row_a = tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=XPUB)
    deposit_address_ensure(tenant=tenant_a, user=user_a, tenant_chain=row_a)
    TenantChain.all_tenants.create(tenant=tenant_b, chain=chain, deposit_xpub=_reencoded(XPUB))
    client_b.login_as(user_b)
    response = client_b.post("/api/v1/chains/31337/deposit-address", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)
    assert response.status_code == 409 and response.json()["code"] == "deposit_address_taken"
    assert not DepositAddress.all_tenants.filter(tenant=tenant_b).exists()
    assert TenantChain.all_tenants.get(tenant=tenant_b, chain=chain).next_deposit_index == 0


def test_a_tenants_admin_gets_form_errors_not_500s_for_a_second_row_or_a_taken_key(
        tenant_a: Tenant, tenant_b: Tenant) -> None:
    """Through the admin as tenant B's owner (no `tenant` field: it is set on save)."""
    from django.test import Client

    from chains.models import TenantChain
    from tenants.models import Membership
    from tests.conftest import make_staff

    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain, deposit_xpub=XPUB)
    owner_b = make_staff(tenant_b, Membership.Role.OWNER)
    client = Client()
    client.force_login(owner_b)
    add = "/admin/chains/tenantchain/add/"
    taken = client.post(add, {"chain": chain.pk, "enabled": "on", "deposit_xpub": _reencoded(XPUB), "_save": "Save"})
    assert taken.status_code == 200
    assert "already derives its deposit addresses" in str(taken.context["adminform"].form.errors)
    plain = {"chain": chain.pk, "enabled": "on", "deposit_xpub": "", "_save": "Save"}
    assert client.post(add, plain).status_code == 302
    again = client.post(add, plain)
    assert again.status_code == 200
    assert "has a row with this chain already" in str(again.context["adminform"].form.errors)
    assert TenantChain.all_tenants.filter(tenant=tenant_b).count() == 1
    # what the admin added offers the chain's native asset, as tenant_chain_enable does
    from wallet.ledger.models import TenantAsset

    assert chain.native_asset_id is not None
    assert TenantAsset.all_tenants.filter(tenant=tenant_b, asset_id=chain.native_asset_id, enabled=True).exists()
