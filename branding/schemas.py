"""The committed JSON Schemas of the branding contracts, generated from the typed models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from branding.document import BrandDocument, DesignTokens, Manifest, ReleaseDocument
from branding.typed import json_schema

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
BASE_ID = "https://wallet-bff.example/schemas/branding/"

CONTRACTS: dict[str, tuple[type, str]] = {
    "brand.schema.json": (BrandDocument, "Branding document (draft and release content)"),
    "release.schema.json": (ReleaseDocument, "Branding release document"),
    "manifest.schema.json": (Manifest, "Branding bundle manifest.json"),
    "tokens.schema.json": (DesignTokens, "Branding bundle tokens/brand.tokens.json (W3C DTCG)"),
}


def generated_schemas() -> dict[str, dict[str, Any]]:
    return {name: json_schema(cls, schema_id=BASE_ID + name, title=title)
            for name, (cls, title) in CONTRACTS.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in generated_schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written


def committed_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text())
