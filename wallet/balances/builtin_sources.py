"""The sources the money core knows itself: the user's ledger accounts and their linked bank accounts."""

from __future__ import annotations

from collections.abc import Sequence

from tenants.models import Tenant, User
from wallet.balances import conf
from wallet.balances.assets import asset_catalogue
from wallet.balances.models import LinkedBankAccount, ProviderConfig
from wallet.balances.providers.banking import BankingProvider
from wallet.balances.providers.errors import ProviderError
from wallet.balances.providers.factory import banking_provider, breaker_key, provider_configs
from wallet.balances.sources import BalanceEntry, BalanceSource
from wallet.ledger.selectors import account_list


class LedgerSource:
    """The user's wallet accounts: a local source, read from the ledger (one query) in the request thread
    while the remote sources are being fetched."""

    kind = "ledger"
    provider = "ledger"
    local = True

    def __init__(self, tenant: Tenant, user: User, timeout: float) -> None:
        self.id = "ledger"
        self.label = "Wallet"
        self.timeout = timeout
        self.tenant = tenant
        self.user = user

    def read(self) -> Sequence[BalanceEntry]:
        return [
            BalanceEntry(key=f"ledger:{account.pk}", asset=account.asset.code, decimals=account.asset.decimals,
                         amount=account.available, label=account.asset.name,
                         details={"account_id": str(account.pk), "posted": str(account.posted),
                                  "held": str(account.held)})
            for account in account_list(tenant=self.tenant, user=self.user)
        ]

    async def fetch(self) -> Sequence[BalanceEntry]:
        raise RuntimeError("a local source is read with read(), in the request thread")


def ledger_sources(tenant: Tenant, user: User) -> list[BalanceSource]:
    return [LedgerSource(tenant, user, conf.source_timeout())]


class BankSource:
    """One linked bank account, read through the tenant's banking adapter."""

    kind = "bank"

    def __init__(self, account: LinkedBankAccount, adapter: BankingProvider | None, error: ProviderError | None,
                 provider: str, decimals: int, timeout: float) -> None:
        self.id = f"bank:{account.pk}"
        self.label = f"{account.institution or account.provider} ••{account.account_last4}".strip()
        self.provider = provider
        self.timeout = timeout
        self.account_id = str(account.pk)
        self.external_id = account.external_id
        self.decimals = decimals
        self._adapter = adapter
        self._error = error

    async def fetch(self) -> Sequence[BalanceEntry]:
        if self._error is not None:
            raise self._error
        assert self._adapter is not None
        bank = await self._adapter.account_get(self.external_id)
        return [BalanceEntry(key=f"bank:{self.account_id}", asset=bank.currency, decimals=self.decimals,
                             amount=bank.available, label=self.label,
                             details={"bank_account_id": self.account_id, "balance": str(bank.balance),
                                      "hold": str(bank.hold), "status": bank.status})]

    async def aclose(self) -> None:
        if self._adapter is not None:
            await self._adapter.aclose()


def bank_sources(tenant: Tenant, user: User) -> list[BalanceSource]:
    accounts = list(LinkedBankAccount.objects.for_tenant(tenant)
                    .filter(user=user, status=LinkedBankAccount.Status.ACTIVE).order_by("created_at"))
    if not accounts:
        return []
    config = provider_configs(tenant=tenant).get(ProviderConfig.Kind.BANKING)
    adapter: BankingProvider | None = None
    error: ProviderError | None = None
    try:
        adapter = banking_provider(tenant=tenant, config=config)
        name = adapter.name
    except ProviderError as exc:
        error, name = exc, (config.provider if config else "none")
    key = breaker_key("banking", name, tenant)
    catalogue = asset_catalogue()
    timeout = conf.source_timeout()
    return [BankSource(account, adapter, error, key, catalogue[account.currency].decimals
                       if account.currency in catalogue else 2, timeout) for account in accounts]
