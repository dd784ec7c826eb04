"""Linking self-custody addresses with Sign-In with Ethereum (EIP-4361).

The server issues a single-use nonce bound to the user, the domain, the URI and the chain id. A link
request checks, in this order: the message parses; the nonce exists, is the user's, unused and unexpired
(read only); domain; URI; chain id; issued-at, expiration and not-before; the signature (EIP-191 for an
ordinary account, ERC-1271 `isValidSignature` by `eth_call` for a contract wallet). Only when all of that
passed is the nonce consumed, by a conditional UPDATE in the transaction that creates the link, so a
refused attempt never burns a valid nonce and a replay loses the race to exactly one winner.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_defunct
from eth_utils import keccak

from chains import errors
from chains.clients import client_for
from chains.conf import setting
from chains.models import LinkedWallet, SiweNonce, TenantChain
from chains.rpc import RpcError
from tenants.models import Tenant, User

with warnings.catch_warnings():  # abnf 2.8 warns about the grammar siwe ships; harmless
    warnings.simplefilter("ignore")
    from siwe import SiweMessage, generate_nonce

ERC1271_MAGIC = "0x1626ba7e"
ERC1271_SELECTOR = keccak(text="isValidSignature(bytes32,bytes)")[:4]
STATEMENT = "Link this address to your wallet account."


@dataclass(frozen=True)
class NonceGrant:
    nonce: SiweNonce
    statement: str

    def fields(self) -> dict[str, Any]:
        n = self.nonce
        return {"domain": n.domain, "uri": n.uri, "version": "1", "chain_id": n.chain_id, "nonce": n.nonce,
                "issued_at": _iso(n.issued_at), "expiration_time": _iso(n.expires_at), "statement": self.statement}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def siwe_nonce_issue(*, tenant: Tenant, user: User, tenant_chain: TenantChain, domain: str, uri: str) -> NonceGrant:
    """A fresh single-use nonce for `user`, with the EIP-4361 fields their message must carry."""
    now = timezone.now()
    with transaction.atomic():
        # The user's expired nonces go (a message over one is refused whether its row exists or not).
        SiweNonce.all_tenants.filter(tenant_id=tenant.pk, user=user, expires_at__lt=now).delete()
        row = SiweNonce.all_tenants.create(
            tenant=tenant, user=user, nonce=generate_nonce(), domain=domain, uri=uri,
            chain_id=tenant_chain.chain.chain_id, issued_at=now,
            expires_at=now + timedelta(seconds=setting("CHAINS_SIWE_NONCE_TTL_SECONDS")),
        )
    return NonceGrant(nonce=row, statement=STATEMENT)


def siwe_nonces_purge(*, now: datetime | None = None, batch: int = 5000) -> int:
    """Delete expired nonces of every tenant, used or not (a message over an expired nonce is refused
    whether its row exists or not), in batches; returns how many. Run by the `chains-purge-siwe-nonces` beat
    entry (hourly); safe to run twice or concurrently."""
    now = now or timezone.now()
    deleted = 0
    while True:
        ids = list(SiweNonce.all_tenants.filter(expires_at__lt=now).values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += SiweNonce.all_tenants.filter(pk__in=ids).delete()[0]


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def _signature_bytes(signature: str) -> bytes:
    text = signature.strip()
    try:
        raw = bytes.fromhex(text[2:] if text.startswith("0x") else text)
    except ValueError as exc:
        raise errors.SiweSignatureInvalid() from exc
    if not raw:
        raise errors.SiweSignatureInvalid()
    return raw


def _erc1271_valid(tenant_chain: TenantChain, address: str, message_hash: bytes, signature: bytes) -> bool:
    """Ask a contract wallet whether it accepts `signature` for `message_hash` (ERC-1271)."""
    client = client_for(tenant_chain.chain)
    try:
        code = client.call("eth_getCode", [address, "latest"])
        if not code or code == "0x":
            return False
        encoded = (ERC1271_SELECTOR + message_hash + (64).to_bytes(32, "big") + len(signature).to_bytes(32, "big")
                   + signature + b"\0" * (-len(signature) % 32))
        result = client.call("eth_call", [{"to": address, "data": "0x" + encoded.hex()}, "latest"])
    except RpcError:
        raise errors.ChainUnavailable() from None
    return isinstance(result, str) and result[:10].lower() == ERC1271_MAGIC


def linked_wallet_create(*, tenant: Tenant, user: User, message: str, signature: str, domain: str,
                         uri: str) -> LinkedWallet:
    """Verify a signed EIP-4361 message and link its address to `user` (see the module docstring)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = SiweMessage.from_message(message=message)
    except Exception as exc:
        raise errors.SiweMalformed() from exc

    now = timezone.now()
    nonce = (SiweNonce.all_tenants.filter(tenant_id=tenant.pk, user=user, nonce=parsed.nonce, used_at__isnull=True,
                                          expires_at__gt=now).first())
    if nonce is None:
        raise errors.SiweNonceInvalid()
    if parsed.domain != nonce.domain or parsed.domain != domain:
        raise errors.SiweDomainMismatch(expected=domain)
    if parsed.uri.rstrip("/") != nonce.uri.rstrip("/") or nonce.uri.rstrip("/") != uri.rstrip("/"):
        raise errors.SiweUriMismatch(expected=uri)
    if int(parsed.chain_id) != nonce.chain_id:
        raise errors.SiweChainMismatch(expected=nonce.chain_id)
    tenant_chain = (TenantChain.all_tenants.filter(tenant_id=tenant.pk, chain__chain_id=nonce.chain_id, enabled=True)
                    .select_related("chain").first())
    if tenant_chain is None:
        raise errors.SiweChainMismatch(expected=nonce.chain_id)

    skew = timedelta(seconds=setting("CHAINS_SIWE_CLOCK_SKEW_SECONDS"))
    try:
        issued_at = _parse_time(parsed.issued_at)
        expires = _parse_time(parsed.expiration_time)
        not_before = _parse_time(parsed.not_before)
    except ValueError as exc:
        raise errors.SiweMalformed() from exc
    if expires is not None and expires <= now:
        raise errors.SiweExpired()
    if issued_at is None or issued_at > now + skew or (not_before is not None and not_before > now + skew):
        raise errors.SiweNotYetValid()
    if issued_at < nonce.issued_at - skew:
        raise errors.SiweExpired(detail="The message was issued before its nonce")

    address = parsed.address.lower()
    raw_signature = _signature_bytes(signature)
    signable = encode_defunct(text=message)
    is_contract = False
    try:
        recovered = Account.recover_message(signable, signature=raw_signature).lower()
    except Exception:
        recovered = ""
    if recovered != address:
        if not _erc1271_valid(tenant_chain, address, _hash_eip191_message(signable), raw_signature):
            raise errors.SiweSignatureInvalid()
        is_contract = True

    existing = LinkedWallet.all_tenants.filter(tenant_id=tenant.pk, address=address).first()
    if existing is not None and existing.user_id != user.pk:
        raise errors.AddressAlreadyLinked()
    try:
        with transaction.atomic():
            consumed = SiweNonce.all_tenants.filter(pk=nonce.pk, used_at__isnull=True).update(used_at=now)
            if consumed != 1:
                raise errors.SiweNonceInvalid()
            if existing is not None:
                return existing
            return LinkedWallet.all_tenants.create(tenant=tenant, user=user, address=address,
                                                   chain_id=nonce.chain_id, is_contract=is_contract)
    except IntegrityError as exc:
        raise errors.AddressAlreadyLinked() from exc
