"""Sign-In with Ethereum linking over the API: a valid sign-in links the address; a replayed nonce, another
domain, URI or chain id, an expired or not-yet-valid message and another key's signature are refused, and a
refused attempt leaves the nonce usable. ERC-1271 contract wallets against anvil."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chains.models import LinkedWallet, SiweNonce
from chains.services import chain_register, tenant_chain_enable
from tenants.models import Tenant, User
from tests.conftest import AppClient
from tests.factories import UserFactory
from tests.fixtures.chains import fixtures
from tests.fixtures.chains.helpers import Anvil, new_account, sign_text, siwe_message

pytestmark = pytest.mark.django_db
anvil = fixtures.anvil


@pytest.fixture
def offline_chain(tenant_a: Tenant) -> Any:
    """Chain 31337 enabled for tenant A; EOA sign-ins never call its RPC (the URL is a closed port)."""
    chain = chain_register(chain_id=31337, name="dev", rpc_urls=["http://127.0.0.1:9"], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain)
    return chain


def nonce(client: AppClient, chain_id: int = 31337) -> dict[str, Any]:
    response = client.post("/api/v1/wallets/nonce", {"chain_id": chain_id}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def link(client: AppClient, message: str, signature: str) -> Any:
    return client.post("/api/v1/wallets", {"message": message, "signature": signature}, format="json")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_nonce_carries_the_eip4361_fields(client_a: AppClient, user_a: User, offline_chain: Any) -> None:
    client_a.login_as(user_a)
    fields = nonce(client_a)
    assert fields["domain"] == "testserver" and fields["uri"] == "http://testserver"
    assert fields["chain_id"] == 31337 and fields["version"] == "1" and len(fields["nonce"]) >= 8
    assert SiweNonce.all_tenants.get(nonce=fields["nonce"]).used_at is None
    assert nonce(client_a)["nonce"] != fields["nonce"]  # single-use: a new one each time


def test_unknown_chain_is_refused(client_a: AppClient, user_a: User, offline_chain: Any) -> None:
    client_a.login_as(user_a)
    response = client_a.post("/api/v1/wallets/nonce", {"chain_id": 1}, format="json")
    assert response.status_code == 404 and response.json()["code"] == "chain_not_enabled"


def test_valid_sign_in_links_the_address_and_the_nonce_cannot_be_replayed(
        client_a: AppClient, user_a: User, offline_chain: Any) -> None:
    client_a.login_as(user_a)
    account = new_account()
    fields = nonce(client_a)
    message = siwe_message(fields, account.address)
    signature = sign_text(account, message)

    response = link(client_a, message, signature)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["address"] == account.address.lower() and body["is_contract"] is False
    assert SiweNonce.all_tenants.get(nonce=fields["nonce"]).used_at is not None

    replay = link(client_a, message, signature)
    assert replay.status_code == 400 and replay.json()["code"] == "siwe_nonce_invalid"
    listed = client_a.get("/api/v1/wallets").json()["results"]
    assert [w["address"] for w in listed] == [account.address.lower()]
    assert client_a.get(f"/api/v1/wallets/{body['id']}").status_code == 200
    assert client_a.delete(f"/api/v1/wallets/{body['id']}").status_code == 204
    assert client_a.get("/api/v1/wallets").json()["results"] == []


@pytest.mark.parametrize(("case", "overrides", "code"), [
    ("wrong domain", {"domain": "evil.example"}, "siwe_domain_mismatch"),
    ("wrong uri", {"uri": "https://evil.example"}, "siwe_uri_mismatch"),
    ("wrong chain id", {"chain_id": 1}, "siwe_chain_mismatch"),
    ("expired", {"expiration_time": "past"}, "siwe_expired"),
    ("not yet valid", {"not_before": "future"}, "siwe_not_yet_valid"),
    ("issued in the future", {"issued_at": "future"}, "siwe_not_yet_valid"),
    ("another key", {"signer": "other"}, "siwe_signature_invalid"),
    ("garbage", {"raw": "hello"}, "siwe_malformed"),
    ("unknown nonce", {"nonce": "abcdefgh12345678"}, "siwe_nonce_invalid"),
])
def test_refused_sign_ins_do_not_burn_the_nonce(client_a: AppClient, user_a: User, offline_chain: Any,
                                                case: str, overrides: dict[str, Any], code: str,
                                                request: pytest.FixtureRequest) -> None:
    if "signer" in overrides:  # a signature that does not recover the address: is it a contract wallet? (RPC)
        offline_chain.rpc_urls = [request.getfixturevalue("anvil").url]
        offline_chain.save()
    client_a.login_as(user_a)
    account = new_account()
    fields = nonce(client_a)
    now = datetime.now(UTC)
    values = dict(overrides)
    signer = account if values.pop("signer", None) is None else new_account()
    times = {"past": iso(now - timedelta(minutes=1)), "future": iso(now + timedelta(hours=1))}
    for key in ("expiration_time", "not_before", "issued_at"):
        if key in values:
            values[key] = times[values[key]]
    raw = values.pop("raw", None)
    message = raw if raw is not None else siwe_message(fields, account.address, **values)

    response = link(client_a, message, sign_text(signer, message))
    assert response.status_code == 400, response.content
    assert response.json()["code"] == code
    assert not LinkedWallet.all_tenants.filter(tenant=user_a.tenant).exists()
    assert SiweNonce.all_tenants.get(nonce=fields["nonce"]).used_at is None

    # The same nonce still works for a correct message.
    good = siwe_message(fields, account.address)
    assert link(client_a, good, sign_text(account, good)).status_code == 201


def test_an_address_belongs_to_one_user_per_tenant(client_a: AppClient, user_a: User, tenant_a: Tenant,
                                                    tenant_b: Tenant, offline_chain: Any) -> None:
    account = new_account()
    client_a.login_as(user_a)
    fields = nonce(client_a)
    message = siwe_message(fields, account.address)
    assert link(client_a, message, sign_text(account, message)).status_code == 201

    other = UserFactory(tenant=tenant_a, email="carol@example.com")
    client_a.login_as(other)
    fields = nonce(client_a)
    message = siwe_message(fields, account.address)
    response = link(client_a, message, sign_text(account, message))
    assert response.status_code == 409 and response.json()["code"] == "address_already_linked"
    assert SiweNonce.all_tenants.get(nonce=fields["nonce"]).used_at is None


def test_nonce_of_another_user_is_refused(client_a: AppClient, user_a: User, tenant_a: Tenant,
                                          offline_chain: Any) -> None:
    account = new_account()
    client_a.login_as(user_a)
    fields = nonce(client_a)
    other = UserFactory(tenant=tenant_a, email="dave@example.com")
    client_a.login_as(other)
    message = siwe_message(fields, account.address)
    response = link(client_a, message, sign_text(account, message))
    assert response.status_code == 400 and response.json()["code"] == "siwe_nonce_invalid"


@pytest.mark.anvil
def test_contract_wallet_signs_in_with_erc1271(anvil: Anvil, client_a: AppClient, user_a: User,
                                               tenant_a: Tenant) -> None:
    chain = chain_register(chain_id=31337, name="anvil", rpc_urls=[anvil.url], confirmations=2)
    tenant_chain_enable(tenant=tenant_a, chain=chain)
    owner, stranger = new_account(), new_account()
    wallet = anvil.deploy("OwnerWallet", owner.address)
    client_a.login_as(user_a)

    fields = nonce(client_a)
    from eth_utils import to_checksum_address

    message = siwe_message(fields, to_checksum_address(wallet))
    refused = link(client_a, message, sign_text(stranger, message))
    assert refused.status_code == 400 and refused.json()["code"] == "siwe_signature_invalid"

    response = link(client_a, message, sign_text(owner, message))
    assert response.status_code == 201, response.content
    assert response.json()["is_contract"] is True and response.json()["address"] == wallet


def test_an_expired_nonce_is_refused_and_purged_on_the_next_issue(client_a: AppClient, user_a: User,
                                                                  offline_chain: Any) -> None:
    client_a.login_as(user_a)
    account = new_account()
    fields = nonce(client_a)
    SiweNonce.all_tenants.filter(nonce=fields["nonce"]).update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    message = siwe_message(fields, account.address)
    response = link(client_a, message, sign_text(account, message))
    assert response.status_code == 400 and response.json()["code"] == "siwe_nonce_invalid"
    nonce(client_a)
    assert not SiweNonce.all_tenants.filter(nonce=fields["nonce"]).exists()


def test_the_scheduled_purge_deletes_expired_nonces_of_every_tenant_and_keeps_live_ones(
        client_a: AppClient, client_b: AppClient, user_a: User, user_b: User, tenant_b: Tenant,
        offline_chain: Any) -> None:
    from django.conf import settings

    from chains.tasks import purge_siwe_nonces
    from wallet.celery import app as celery_app

    tenant_chain_enable(tenant=tenant_b, chain=offline_chain)
    client_a.login_as(user_a)
    client_b.login_as(user_b)
    expired = [nonce(client_a)["nonce"], nonce(client_b)["nonce"]]
    live = [nonce(client_a)["nonce"], nonce(client_b)["nonce"]]
    SiweNonce.all_tenants.filter(nonce__in=expired).update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    # The users never ask for another nonce: only the scheduled task removes the expired ones.
    assert purge_siwe_nonces.apply().get() == 2
    assert sorted(SiweNonce.all_tenants.values_list("nonce", flat=True)) == sorted(live)
    assert purge_siwe_nonces.apply().get() == 0
    entry = settings.CELERY_BEAT_SCHEDULE["chains-purge-siwe-nonces"]
    assert entry["task"] == "chains.purge_siwe_nonces" and entry["schedule"] == 3600
    celery_app.loader.import_default_modules()
    assert "chains.purge_siwe_nonces" in celery_app.tasks
