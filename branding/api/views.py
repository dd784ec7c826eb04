"""Branding endpoints. Plain Django views (not DRF): the runtime endpoint is hit on every app launch
and answers a matching `If-None-Match` from a per-process cache before any other work; the bundle is a
binary download authenticated by a build token rather than a user.
"""

from __future__ import annotations

import hashlib

from django.http import HttpRequest, HttpResponse, HttpResponseNotModified
from django.views import View

from branding import runtime
from branding.errors import BrandingNotPublished, BuildTokenInvalid
from branding.export import release_bundle_zip
from branding.selectors import build_token_authenticate, release_get, release_list
from wallet.core.errors import ApiError, problem_response


def _load_entry(tenant: object) -> runtime.RuntimeEntry:
    release = release_list(tenant=tenant).first()  # type: ignore[arg-type]
    if release is None:
        return runtime.put(tenant.pk, None, b"")  # type: ignore[attr-defined]
    return runtime.put(tenant.pk, release.etag, runtime.runtime_body(release))  # type: ignore[attr-defined]


class BrandingRuntimeView(View):
    """`GET /api/v1/branding`: the tenant's current release (app key only, no sign-in), with an ETag;
    `If-None-Match` with the current ETag answers 304."""

    http_method_names = ["get", "head", "options"]

    def get(self, request: HttpRequest) -> HttpResponse:
        tenant = request.tenant  # type: ignore[attr-defined]
        entry = runtime.get(tenant.pk) or _load_entry(tenant)
        if entry.etag is None:
            return problem_response(BrandingNotPublished(), instance=request.path)
        if runtime.etag_matches(request.META.get("HTTP_IF_NONE_MATCH"), entry.etag):
            response: HttpResponse = HttpResponseNotModified()
        else:
            response = HttpResponse(entry.body, content_type="application/json")
        response["ETag"] = entry.etag
        response["Cache-Control"] = "no-cache"
        response["Vary"] = "X-App-Key"  # one URL for every tenant: caches must key on the app key
        return response


class ReleaseBundleView(View):
    """`GET /api/v1/branding/releases/{n}/bundle.zip`: the release's reproducible bundle, for CI, with
    `Authorization: Bearer <build token>` of the app key's tenant (read-only)."""

    http_method_names = ["get", "head", "options"]

    def get(self, request: HttpRequest, number: int) -> HttpResponse:
        tenant = request.tenant  # type: ignore[attr-defined]
        try:
            scheme, _, raw = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
            if scheme.lower() != "bearer" or not raw.strip().startswith("bbt_"):
                raise BuildTokenInvalid("Send 'Authorization: Bearer <build token>'.")
            build_token_authenticate(tenant=tenant, raw=raw.strip())
            release = release_get(tenant=tenant, number=number)
            data = release_bundle_zip(tenant=tenant, release=release)
        except ApiError as error:
            response = problem_response(error, instance=request.path)
            if isinstance(error, BuildTokenInvalid):
                response["WWW-Authenticate"] = 'Bearer realm="branding-build"'
            return response
        digest = hashlib.sha256(data).hexdigest()
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{tenant.slug}-branding-r{release.number}.zip"'
        response["ETag"] = f'"{digest}"'
        response["Digest-SHA256"] = digest
        response["Cache-Control"] = "private, max-age=31536000, immutable"
        return response
