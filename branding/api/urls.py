"""API routes of the branding app, mounted under /api/v1/."""

from django.urls import URLPattern, path

from branding.api.staff import DraftApi, DraftCheckApi, ReleasePublishApi
from branding.api.views import BrandingRuntimeView, ReleaseBundleView

urlpatterns: list[URLPattern] = [
    path("branding", BrandingRuntimeView.as_view(), name="branding-runtime"),
    path("branding/releases/<int:number>/bundle.zip", ReleaseBundleView.as_view(), name="branding-release-bundle"),
    path("branding/draft", DraftApi.as_view(), name="branding-draft"),
    path("branding/draft/check", DraftCheckApi.as_view(), name="branding-draft-check"),
    path("branding/releases", ReleasePublishApi.as_view(), name="branding-release-publish"),
]
