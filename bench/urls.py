"""The project's URLs plus `bench/bare/`: a bare Django JSON view, the reference for the API benchmark."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from wallet.urls import urlpatterns as _base


def bare_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [*_base, path("bench/bare/", bare_view)]
