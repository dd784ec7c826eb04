"""Output shapes of the balances API (the balances body is built by `services.balances_render`; these
serializers document it in the OpenAPI schema)."""

from __future__ import annotations

from rest_framework import serializers

from wallet.balances.models import LinkedBankAccount


class BalanceEntryOutputSerializer(serializers.Serializer):
    key = serializers.CharField()
    asset = serializers.CharField(help_text="Asset code, e.g. USD, ETH:31337")
    decimals = serializers.IntegerField()
    amount = serializers.CharField(help_text="Smallest unit, as a string of digits (full precision)")
    value = serializers.CharField(allow_null=True,
                                  help_text="In the display currency, rounded once (half to even); null: no rate")
    label = serializers.CharField()
    details = serializers.DictField()


class BalanceSourceOutputSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="ledger, bank:<linked account id>, chain:...")
    kind = serializers.CharField()
    label = serializers.CharField()
    # Plain strings rather than enums: drf-spectacular would name colliding "status" enums arbitrarily.
    status = serializers.CharField(help_text="fresh, stale or unavailable")
    error = serializers.CharField(allow_null=True, help_text="Why stale/unavailable, e.g. provider_timeout")
    as_of = serializers.DateTimeField(allow_null=True, help_text="When these figures were fetched")
    age_seconds = serializers.IntegerField(allow_null=True)
    entries = BalanceEntryOutputSerializer(many=True)


class BalanceTotalOutputSerializer(serializers.Serializer):
    value = serializers.CharField()
    complete = serializers.BooleanField(help_text="False when a source is unavailable or an asset has no rate")


class RatesStatusOutputSerializer(serializers.Serializer):
    status = serializers.CharField(help_text="fresh, stale or unavailable")
    as_of = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(allow_null=True)


class BalancesOutputSerializer(serializers.Serializer):
    currency = serializers.CharField()
    decimals = serializers.IntegerField()
    as_of = serializers.DateTimeField()
    total = BalanceTotalOutputSerializer()
    rates = RatesStatusOutputSerializer()
    sources = BalanceSourceOutputSerializer(many=True)


class PreferenceOutputSerializer(serializers.Serializer):
    display_currency = serializers.CharField()
    supported = serializers.ListField(child=serializers.CharField())


class BankAccountOutputSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True, help_text="active or removed")

    class Meta:
        model = LinkedBankAccount
        fields = ("id", "provider", "external_id", "name", "institution", "account_last4", "currency", "status",
                  "created_at")
        read_only_fields = fields
