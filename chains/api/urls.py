"""API routes of the chains app, mounted under /api/v1/."""

from django.urls import path

from chains.api import views

urlpatterns = [
    path("chains", views.ChainListApi.as_view(), name="chains"),
    path("chains/<str:chain_id>/deposit-address", views.DepositAddressEnsureApi.as_view(),
         name="chain-deposit-address"),
    path("chains/<str:chain_id>/transactions", views.TransactionRouter.as_view(), name="chain-transactions"),
    path("transactions/<str:transaction_id>", views.TransactionDetailApi.as_view(), name="transaction-detail"),
    path("wallets/nonce", views.WalletNonceApi.as_view(), name="wallets-nonce"),
    path("wallets", views.WalletRouter.as_view(), name="wallets"),
    path("wallets/<str:wallet_id>", views.WalletDetailApi.as_view(), name="wallet-detail"),
    path("wallets/<str:wallet_id>/balances", views.WalletBalancesApi.as_view(), name="wallet-balances"),
    path("deposit-addresses", views.DepositAddressListApi.as_view(), name="deposit-addresses"),
    path("deposits", views.DepositListApi.as_view(), name="deposits"),
    path("deposits/<str:deposit_id>", views.DepositDetailApi.as_view(), name="deposit-detail"),
    path("activity", views.ActivityListApi.as_view(), name="activity"),
    path("activity/<str:activity_id>", views.ActivityDetailApi.as_view(), name="activity-detail"),
]
