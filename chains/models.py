"""Chains: the chain and token registry (platform data), per-tenant enablement, linked self-custody
addresses (Sign-In with Ethereum), deposit addresses, the watcher's cursor and recent blocks, deposits,
relayed transactions and cached on-chain balances.

Addresses are stored lower-case hex (`0x` + 40); transaction and block hashes lower-case hex (`0x` + 64).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import User
from tenants.scoping import TenantOwned
from wallet.core.ids import uuid7
from wallet.core.money import AmountField
from wallet.ledger.models import Asset, JournalEntry

address_validator = RegexValidator(r"^0x[0-9a-f]{40}$", "A lower-case hex address: 0x and 40 hex digits")


class Chain(models.Model):
    """An EVM chain the platform can watch (platform data, edited by superusers)."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    chain_id = models.BigIntegerField(unique=True, validators=[MinValueValidator(1)])
    name = models.CharField(max_length=100)
    rpc_urls = models.JSONField(default=list, help_text="HTTP JSON-RPC URLs in failover order (first: primary)")
    ws_url = models.CharField(max_length=500, blank=True, help_text="Optional websocket URL for new heads")
    confirmations = models.PositiveIntegerField(default=12, validators=[MinValueValidator(1)],
                                                help_text="Blocks (including the deposit's) before final")
    trust_finalized = models.BooleanField(default=False,
                                          help_text="Treat blocks at or below the node's `finalized` tag as final")
    poll_interval_ms = models.PositiveIntegerField(default=2000, validators=[MinValueValidator(50)])
    reorg_window = models.PositiveIntegerField(default=64, help_text="Recent blocks whose hashes are kept")
    log_chunk_blocks = models.PositiveIntegerField(default=2000, help_text="Blocks per eth_getLogs query")
    scan_native = models.BooleanField(default=True, help_text="Watch native transfers (not only token logs)")

    class NativeSource(models.TextChoices):
        AUTO = "auto", "trace_filter where the node has it, else block bodies"
        TRACES = "traces", "trace_filter (top-level and internal transfers)"
        BODIES = "bodies", "Block bodies (top-level transactions only)"

    native_source = models.CharField(max_length=6, choices=NativeSource.choices, default=NativeSource.AUTO,
                                     help_text="Where native transfers are read from")
    native_asset = models.ForeignKey(Asset, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    multicall3_address = models.CharField(max_length=42, blank=True, validators=[address_validator])
    stale_after_seconds = models.PositiveIntegerField(default=120,
                                                      help_text="Alarm when the head has not advanced this long")
    start_block = models.BigIntegerField(null=True, blank=True,
                                         help_text="Where a watcher with no cursor starts; empty: the head then")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("chain_id",)

    def __str__(self) -> str:
        return f"{self.name} ({self.chain_id})"


class Token(models.Model):
    """An ERC-20 token of a chain (platform data); its ledger asset is created with it."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    chain = models.ForeignKey(Chain, on_delete=models.CASCADE, related_name="tokens")
    contract = models.CharField(max_length=42, validators=[address_validator])
    symbol = models.CharField(max_length=16)
    decimals = models.PositiveSmallIntegerField()
    asset = models.OneToOneField(Asset, on_delete=models.PROTECT, related_name="+")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ("chain__chain_id", "symbol")
        constraints = [models.UniqueConstraint(fields=["chain", "contract"], name="token_unique_per_chain")]

    def __str__(self) -> str:
        return f"{self.symbol} on {self.chain.chain_id}"


def _xpub_validator(value: str) -> None:
    """Admin forms (and full_clean) refuse anything but an extended public key: an xprv is a private key."""
    from chains.derivation import InvalidXpub, validate_xpub

    try:
        validate_xpub(value)
    except InvalidXpub as exc:
        raise ValidationError("Must be a BIP-32 extended public key (xpub/tpub), never a private key.") from exc


XPUB_IN_USE = "Another app already derives its deposit addresses from this xpub on this chain."


class TenantChain(TenantOwned):
    """A chain a tenant's app offers; optionally the extended public key its deposit addresses come from."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    chain = models.ForeignKey(Chain, on_delete=models.PROTECT, related_name="+")
    enabled = models.BooleanField(default=True)
    deposit_xpub = models.CharField(max_length=200, blank=True, validators=[_xpub_validator],
                                    help_text="BIP-32 extended public key (xpub); empty: no deposit addresses")
    next_deposit_index = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "chain"], name="tenant_chain_unique"),
            # Two apps deriving from one xpub would derive the same addresses: a deposit to one would be
            # both tenants' (and the second's first address failed on `deposit_address_unique`, a 500).
            models.UniqueConstraint(fields=["chain", "deposit_xpub"], condition=~models.Q(deposit_xpub=""),
                                    name="tenant_chain_unique_xpub",
                                    violation_error_message=XPUB_IN_USE),
        ]

    def __str__(self) -> str:
        return f"{self.chain_id} for {self.tenant_id}"

    def validate_constraints(self, exclude: Any = None) -> None:
        """Django's checks, but the xpub's across tenants (a tenant's admin works in its tenant's scope, where
        the default manager cannot see the other tenant's row) and by key, not by text (`xpub_in_use`)."""
        exclude = set(exclude or ())
        errors: dict[str, list[Any]] = {}
        try:
            super().validate_constraints(exclude=exclude | {"deposit_xpub"})
        except ValidationError as error:
            errors = error.update_error_dict(errors)
        if not ({"chain", "deposit_xpub"} & exclude) and self.deposit_xpub and self.chain_id is not None and (
                xpub_in_use(chain_id=self.chain_id, xpub=self.deposit_xpub, other_than=self.pk)):
            errors.setdefault("deposit_xpub", []).append(ValidationError(XPUB_IN_USE))
        if errors:
            raise ValidationError(errors)


def xpub_in_use(*, chain_id: Any, xpub: str, other_than: Any = None) -> bool:
    """Whether another tenant's app on this chain derives from the same key as `xpub` (whatever its encoding:
    the unique constraint only sees identical texts). A chain has one row per tenant that offers it."""
    key = _key_or_none(xpub)
    if key is None:  # not an xpub: the field's validator says so
        return False
    rows = TenantChain.all_tenants.filter(chain_id=chain_id).exclude(deposit_xpub="").exclude(pk=other_than)
    return any(_key_or_none(other) == key for other in rows.values_list("deposit_xpub", flat=True))


def _key_or_none(xpub: str) -> bytes | None:
    from chains.derivation import xpub_key

    try:
        return xpub_key(xpub)
    except Exception:  # not an extended public key: it derives nothing
        return None


class SiweNonce(TenantOwned):
    """A single-use Sign-In with Ethereum nonce with the message fields the server expects."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    nonce = models.CharField(max_length=64, unique=True)
    domain = models.CharField(max_length=255)
    uri = models.CharField(max_length=500)
    chain_id = models.BigIntegerField()
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.nonce


class LinkedWallet(TenantOwned):
    """A self-custody address a user proved they control (one user per address per tenant)."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="linked_wallets")
    address = models.CharField(max_length=42, validators=[address_validator])
    chain_id = models.BigIntegerField(help_text="The chain id of the sign-in message")
    is_contract = models.BooleanField(default=False, help_text="Verified by ERC-1271")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("created_at", "id")
        constraints = [models.UniqueConstraint(fields=["tenant", "address"], name="linked_wallet_unique_address")]
        indexes = [models.Index(fields=["address"], name="linked_wallet_address")]

    def __str__(self) -> str:
        return self.address


class DepositAddress(TenantOwned):
    """A custodial deposit address derived from the tenant's xpub (public derivation, `m/0/<index>`)."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="deposit_addresses")
    chain = models.ForeignKey(Chain, on_delete=models.PROTECT, related_name="+")
    address = models.CharField(max_length=42, validators=[address_validator])
    derivation_index = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("created_at", "id")
        constraints = [
            models.UniqueConstraint(fields=["tenant", "user", "chain"], name="deposit_address_one_per_user_chain"),
            models.UniqueConstraint(fields=["chain", "address"], name="deposit_address_unique"),
        ]

    def __str__(self) -> str:
        return self.address


class ChainCursor(models.Model):
    """Where the watcher of a chain is: the last block fully processed, and the last head seen."""

    chain = models.OneToOneField(Chain, on_delete=models.CASCADE, primary_key=True, related_name="cursor")
    block_number = models.BigIntegerField(help_text="Last block fully processed")
    head_number = models.BigIntegerField(default=0)
    head_changed_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.chain_id}@{self.block_number}"


class BlockRecord(models.Model):
    """A recent processed block's hash and parent hash (the reorg window)."""

    id = models.BigAutoField(primary_key=True)
    chain = models.ForeignKey(Chain, on_delete=models.CASCADE, related_name="+")
    number = models.BigIntegerField()
    hash = models.CharField(max_length=66)
    parent_hash = models.CharField(max_length=66)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "number"], name="block_record_unique")]

    def __str__(self) -> str:
        return f"{self.chain_id}#{self.number}"


class Deposit(TenantOwned):
    """A transfer to (a deposit: credited once when final) or from (outgoing activity, never credited) a
    watched address, from `seen` to `final` or `reorged`."""

    class Status(models.TextChoices):
        SEEN = "seen", "Seen"
        CONFIRMING = "confirming", "Confirming"
        FINAL = "final", "Final"
        REORGED = "reorged", "Removed by a reorg"

    class Kind(models.TextChoices):
        LINKED = "linked", "Linked wallet"
        DEPOSIT = "deposit", "Deposit address"

    class Direction(models.TextChoices):
        IN = "in", "Incoming (a deposit: credited when final)"
        OUT = "out", "Outgoing (on-chain activity only: never touches the ledger)"

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    chain = models.ForeignKey(Chain, on_delete=models.PROTECT, related_name="+")
    tx_hash = models.CharField(max_length=66)
    log_index = models.IntegerField(help_text="-1 for a native transfer (-1-n for the n-th trace of its transaction)")
    direction = models.CharField(max_length=3, choices=Direction.choices, default=Direction.IN)
    block_number = models.BigIntegerField()
    block_hash = models.CharField(max_length=66)
    from_address = models.CharField(max_length=42)
    to_address = models.CharField(max_length=42)
    address_kind = models.CharField(max_length=8, choices=Kind.choices)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="deposits")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    amount = AmountField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.SEEN)
    confirmations = models.PositiveIntegerField(default=0)
    entry = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    reversal = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    shortfall = AmountField(default=0, help_text="Part of a reversed credit the user had already spent (debited to "
                                                 "the tenant's suspense account)")
    seen_at = models.DateTimeField(default=timezone.now)
    final_at = models.DateTimeField(null=True, blank=True)
    reorged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-block_number", "-log_index")
        constraints = [
            # Exactly once: one row per (tenant, chain, transaction, log) whatever the watcher does twice.
            models.UniqueConstraint(fields=["tenant", "chain", "tx_hash", "log_index", "direction"],
                                    name="deposit_unique"),
        ]
        indexes = [
            models.Index(fields=["chain", "status", "block_number"], name="deposit_chain_status"),
            models.Index(fields=["tenant", "user", "-seen_at"], name="deposit_user_time"),
        ]

    def __str__(self) -> str:
        return f"{self.tx_hash}:{self.log_index}"


class RelayedTransaction(TenantOwned):
    """A signed transaction a user asked us to broadcast, tracked until final (or failed, dropped, replaced)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        INCLUDED = "included", "Included"
        FINAL = "final", "Final"
        FAILED = "failed", "Failed (reverted)"
        DROPPED = "dropped", "Dropped"
        REPLACED = "replaced", "Replaced (another transaction took its nonce)"

    TERMINAL = frozenset({Status.FINAL, Status.FAILED, Status.DROPPED, Status.REPLACED})

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    chain = models.ForeignKey(Chain, on_delete=models.PROTECT, related_name="+")
    tx_hash = models.CharField(max_length=66)
    sender = models.CharField(max_length=42)
    nonce = models.BigIntegerField()
    raw = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    block_number = models.BigIntegerField(null=True, blank=True)
    block_hash = models.CharField(max_length=66, blank=True)
    replaced_by = models.CharField(max_length=66, blank=True)
    error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [models.UniqueConstraint(fields=["tenant", "chain", "tx_hash"], name="relayed_tx_unique")]
        indexes = [models.Index(fields=["chain", "status"], name="relayed_tx_chain_status")]

    def __str__(self) -> str:
        return self.tx_hash


class AddressBalance(models.Model):
    """A cached on-chain balance (public data, shared by tenants): native when `token` is empty."""

    id = models.BigAutoField(primary_key=True)
    chain = models.ForeignKey(Chain, on_delete=models.CASCADE, related_name="+")
    address = models.CharField(max_length=42)
    token = models.ForeignKey(Token, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    amount = AmountField()
    block_number = models.BigIntegerField()
    read_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "address", "token"], name="address_balance_unique"),
            models.UniqueConstraint(fields=["chain", "address"], condition=Q(token__isnull=True),
                                    name="address_balance_native_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.address}@{self.block_number}"
