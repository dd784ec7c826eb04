"""bench/urls.py (the project's URLs and `bench/bare/`) plus the sequential reference of the balances
benchmark: the same endpoint, with the same sources, fetched one after another."""

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response

from bench.urls import urlpatterns as _base
from wallet.balances import services
from wallet.balances.api.views import BalancesApi


class SequentialBalancesApi(BalancesApi):
    def get(self, request: Request) -> Response:
        body = services.balances_read(tenant=request._request.tenant, user=request.user, refresh=True,
                                      sequential=True)
        return Response(body)


urlpatterns = [*_base, path("api/v1/bench/balances/sequential", SequentialBalancesApi.as_view())]
