"""Output serializers of the chains API (amounts as strings, with the asset's decimals)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from chains.models import DepositAddress, LinkedWallet, RelayedTransaction
from chains.relay import relay_payload
from chains.watcher import deposit_payload


class TokenOutputSerializer(serializers.Serializer):
    contract = serializers.CharField()
    symbol = serializers.CharField()
    decimals = serializers.IntegerField()
    asset = serializers.CharField(source="asset.code")


class ChainOutputSerializer(serializers.Serializer):
    chain_id = serializers.IntegerField(source="chain.chain_id")
    name = serializers.CharField(source="chain.name")
    confirmations = serializers.IntegerField(source="chain.confirmations")
    native_asset = serializers.SerializerMethodField()
    deposit_addresses = serializers.BooleanField()
    tokens = TokenOutputSerializer(many=True)

    def get_native_asset(self, obj: dict[str, Any]) -> str | None:
        asset = obj["chain"].native_asset
        return asset.code if asset else None


class NonceOutputSerializer(serializers.Serializer):
    domain = serializers.CharField()
    uri = serializers.CharField()
    version = serializers.CharField()
    chain_id = serializers.IntegerField()
    nonce = serializers.CharField()
    issued_at = serializers.CharField()
    expiration_time = serializers.CharField()
    statement = serializers.CharField()


class LinkedWalletOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField()

    class Meta:
        model = LinkedWallet
        fields = ("id", "address", "chain_id", "is_contract", "created_at")


class BalanceOutputSerializer(serializers.Serializer):
    chain_id = serializers.IntegerField()
    asset = serializers.CharField()
    decimals = serializers.IntegerField()
    contract = serializers.CharField(allow_null=True)
    amount = serializers.CharField()
    block_number = serializers.IntegerField()
    read_at = serializers.DateTimeField()


class DepositAddressOutputSerializer(serializers.ModelSerializer):
    id = serializers.CharField()
    chain_id = serializers.IntegerField(source="chain.chain_id")

    class Meta:
        model = DepositAddress
        fields = ("id", "chain_id", "address", "created_at")


class DepositOutputSerializer(serializers.Serializer):
    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = deposit_payload(instance)
        data["seen_at"] = instance.seen_at.isoformat()
        data["final_at"] = instance.final_at.isoformat() if instance.final_at else None
        return data


class RelayedTransactionOutputSerializer(serializers.Serializer):
    def to_representation(self, instance: RelayedTransaction) -> dict[str, Any]:
        return relay_payload(instance)
