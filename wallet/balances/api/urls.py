"""API routes of the balances app, mounted under /api/v1/."""

from django.urls import path

from wallet.balances.api import views

urlpatterns = [
    path("balances", views.balances_view, name="balances"),
    path("balances/preferences", views.PreferenceRouter.as_view(), name="balance-preferences"),
    path("bank-accounts", views.BankAccountRouter.as_view(), name="bank-accounts"),
    path("bank-accounts/<str:bank_account_id>", views.BankAccountDetailRouter.as_view(),
         name="bank-account-detail"),
]
