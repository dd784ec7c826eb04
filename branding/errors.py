"""Errors of the branding app (stable codes, rendered as problem+json)."""

from __future__ import annotations

from collections.abc import Sequence

from branding.typed import Problem
from wallet.core.errors import ApiError, error_class


class BrandingInvalid(ApiError):
    """The document or an upload fails validation; `errors` lists `{pointer, code, detail}` per field."""

    code = "branding_invalid"
    status = 422
    title = "The branding has invalid fields"

    def __init__(self, problems: Sequence[Problem], detail: str | None = None) -> None:
        self.problems = list(problems)
        super().__init__(detail, errors=[p.as_dict() for p in self.problems])


BrandingNotPublished = error_class("branding_not_published", 404, "This tenant has no published branding")
BrandingUnchanged = error_class("branding_unchanged", 409, "The draft is identical to the latest release")
BuildTokenInvalid = error_class("build_token_invalid", 401, "A valid build token is required")
AssetCorrupt = error_class("branding_asset_corrupt", 500, "A stored branding file does not match its hash")
