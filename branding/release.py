"""From a checked brand document to the frozen release document, its canonical JSON and content hash."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from branding.colors import tonal_palettes
from branding.document import (
    DOCUMENT_SCHEMA_VERSION,
    BrandDocument,
    ColorScheme,
    ReleaseDocument,
    Schemes,
)
from branding.typed import Problem, dump, parse


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the form that is hashed."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def content_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(content)).hexdigest()


def release_document(document: BrandDocument, schemes: dict[str, dict[str, str]]) -> ReleaseDocument:
    palettes = tonal_palettes(document.colors.seed)
    return ReleaseDocument(
        schema_version=DOCUMENT_SCHEMA_VERSION,
        brand=document,
        schemes=Schemes(light=ColorScheme(**schemes["light"]), dark=ColorScheme(**schemes["dark"])),
        palettes={name: {str(tone): value for tone, value in tones.items()} for name, tones in palettes.items()},
    )


def release_content(document: BrandDocument, schemes: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The JSON stored in `BrandingRelease.content`."""
    return dump(release_document(document, schemes))


def load_release(content: dict[str, Any]) -> ReleaseDocument:
    """Parse a stored release's content back into its typed form (it was valid when frozen)."""
    problems: list[Problem] = []
    parsed = parse(ReleaseDocument, content, problems)
    if parsed is None:
        raise ValueError(f"stored release content does not parse: {problems[:3]}")
    return parsed
