"""Output serializers of the money API. Amounts are strings of the smallest unit, beside `decimals`."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from wallet.ledger.models import Account, Hold, Posting, TenantAsset, Transfer


def _amount(value: int | None) -> str | None:
    return None if value is None else str(value)


class AssetOutputSerializer(serializers.Serializer):
    code = serializers.CharField(source="asset.code")
    kind = serializers.CharField(source="asset.kind")
    name = serializers.CharField(source="asset.name")
    symbol = serializers.CharField(source="asset.symbol")
    decimals = serializers.IntegerField(source="asset.decimals")
    chain_id = serializers.IntegerField(source="asset.chain_id", allow_null=True)
    contract_address = serializers.CharField(source="asset.contract_address")
    max_per_transfer = serializers.SerializerMethodField()
    daily_limit_per_user = serializers.SerializerMethodField()

    def get_max_per_transfer(self, obj: TenantAsset) -> str | None:
        return _amount(obj.max_per_transfer)

    def get_daily_limit_per_user(self, obj: TenantAsset) -> str | None:
        return _amount(obj.daily_limit_per_user)


class AccountOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    asset = serializers.CharField(source="asset.code")
    decimals = serializers.IntegerField(source="asset.decimals")
    posted = serializers.SerializerMethodField()
    held = serializers.SerializerMethodField()
    available = serializers.SerializerMethodField()
    updated_at = serializers.DateTimeField()

    def get_posted(self, obj: Account) -> str:
        return str(obj.posted)

    def get_held(self, obj: Account) -> str:
        return str(obj.held)

    def get_available(self, obj: Account) -> str:
        return str(obj.available)


class PostingOutputSerializer(serializers.Serializer):
    id = serializers.CharField(source="entry_id")
    seq = serializers.IntegerField(source="entry.seq")
    type = serializers.CharField(source="entry.kind")
    amount = serializers.SerializerMethodField(help_text="Signed: negative leaves the account")
    decimals = serializers.IntegerField(source="asset.decimals")
    memo = serializers.CharField(source="entry.memo")
    reference = serializers.CharField(source="entry.reference")
    reverses = serializers.CharField(source="entry.reverses_id", allow_null=True)
    created_at = serializers.DateTimeField()

    def get_amount(self, obj: Posting) -> str:
        return str(obj.amount)


class CounterpartySerializer(serializers.Serializer):
    id = serializers.CharField()
    display_name = serializers.CharField()
    handle = serializers.CharField(allow_null=True)


class TransferOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    direction = serializers.SerializerMethodField()
    asset = serializers.CharField(source="asset.code")
    decimals = serializers.IntegerField(source="asset.decimals")
    amount = serializers.SerializerMethodField()
    memo = serializers.CharField()
    status = serializers.CharField()
    counterparty = serializers.SerializerMethodField()
    entry_id = serializers.CharField()
    created_at = serializers.DateTimeField()

    def _viewer_sent(self, obj: Transfer) -> bool:
        return obj.sender_id == self.context["user"].pk

    def get_direction(self, obj: Transfer) -> str:
        return "out" if self._viewer_sent(obj) else "in"

    def get_amount(self, obj: Transfer) -> str:
        return str(obj.amount)

    def get_counterparty(self, obj: Transfer) -> dict[str, Any]:
        other = obj.recipient if self._viewer_sent(obj) else obj.sender
        return CounterpartySerializer(other).data


class HoldOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    account_id = serializers.CharField()
    asset = serializers.CharField(source="account.asset.code")
    decimals = serializers.IntegerField(source="account.asset.decimals")
    amount = serializers.SerializerMethodField()
    remaining = serializers.SerializerMethodField()
    status = serializers.CharField()
    memo = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()

    def get_amount(self, obj: Hold) -> str:
        return str(obj.amount)

    def get_remaining(self, obj: Hold) -> str:
        return str(obj.remaining)
