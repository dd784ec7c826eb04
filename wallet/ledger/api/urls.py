from django.urls import path

from wallet.ledger.api import views

urlpatterns = [
    path("assets", views.AssetListApi.as_view(), name="assets"),
    path("accounts", views.AccountListApi.as_view(), name="accounts"),
    path("accounts/<str:account_id>/entries", views.AccountEntriesApi.as_view(), name="account-entries"),
    path("transfers", views.transfers_view, name="transfers"),
    path("transfers/<str:transfer_id>", views.TransferDetailApi.as_view(), name="transfer-detail"),
    path("holds", views.HoldRouter.as_view(), name="holds"),
    path("holds/<str:hold_id>", views.HoldDetailApi.as_view(), name="hold-detail"),
    path("holds/<str:hold_id>/post", views.HoldPostApi.as_view(), name="hold-post"),
    path("holds/<str:hold_id>/void", views.HoldVoidApi.as_view(), name="hold-void"),
]
