"""API routes of the balances app, mounted under /api/v1/."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
