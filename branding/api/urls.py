"""API routes of the branding app, mounted under /api/v1/."""

from django.urls import URLPattern, path

from branding.api.views import BrandingRuntimeView, ReleaseBundleView

urlpatterns: list[URLPattern] = [
    path("branding", BrandingRuntimeView.as_view(), name="branding-runtime"),
    path("branding/releases/<int:number>/bundle.zip", ReleaseBundleView.as_view(), name="branding-release-bundle"),
]
