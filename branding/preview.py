"""What the admin preview and the release diff show: resolved schemes with contrast problems per
element, and a flattened diff of two release documents."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from branding.colors import CONTRAST_PAIRS, contrast_ratio, resolve_scheme, scheme_from_seed
from branding.typed import Problem
from branding.validation import HEX_RE, check_document

FALLBACK_SEED = "#6750A4"


@dataclass(frozen=True)
class PairView:
    foreground: str
    background: str
    fg: str
    bg: str
    ratio: float
    minimum: float
    ok: bool


def _schemes(content: dict[str, Any]) -> dict[str, dict[str, str]]:
    colors = content.get("colors") if isinstance(content.get("colors"), dict) else {}
    seed = colors.get("seed") if isinstance(colors.get("seed"), str) and HEX_RE.match(colors["seed"]) else None
    schemes = {}
    for mode in ("light", "dark"):
        overrides = colors.get(mode) if isinstance(colors.get(mode), dict) else {}
        valid = {k: v for k, v in overrides.items() if isinstance(v, str) and HEX_RE.match(v)}
        base = seed or FALLBACK_SEED
        try:
            schemes[mode] = resolve_scheme(base, valid, dark=mode == "dark")
        except KeyError:
            schemes[mode] = scheme_from_seed(base, dark=mode == "dark")
    return schemes


def preview_context(content: dict[str, Any], problems: list[Problem], logo: bytes | None) -> dict[str, Any]:
    """Template context of the phone mocks: per mode, the scheme, each drawn pair with its ratio."""
    schemes = _schemes(content if isinstance(content, dict) else {})
    modes = []
    for mode in ("light", "dark"):
        scheme = schemes[mode]
        pairs = {}
        for pair in CONTRAST_PAIRS:
            ratio = contrast_ratio(scheme[pair.foreground], scheme[pair.background])
            pairs[f"{pair.foreground}__{pair.background}"] = PairView(
                pair.foreground, pair.background, scheme[pair.foreground], scheme[pair.background], round(ratio, 2),
                pair.minimum, ratio + 1e-9 >= pair.minimum)
        modes.append({"name": mode, "scheme": scheme, "pairs": pairs,
                      "failing": [p for p in pairs.values() if not p.ok]})
    identity = content.get("identity") if isinstance(content.get("identity"), dict) else {}
    logo_uri = None
    if logo:
        media = "image/png" if logo.startswith(b"\x89PNG") else "image/svg+xml"
        # Shown through <img>, where an SVG cannot run scripts; uploads were checked anyway.
        logo_uri = f"data:{media};base64,{base64.b64encode(logo).decode()}"
    return {"modes": modes, "problems": problems, "display_name": identity.get("display_name") or "Your wallet",
            "logo_uri": logo_uri}


def draft_problems(content: Any, load_asset: Any) -> list[Problem]:
    return check_document(content, load_asset).problems


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """JSON pointer -> leaf value."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}/{key}"))
        return out or {prefix or "/": {}}
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}/{index}"))
        return out or {prefix or "/": []}
    return {prefix or "/": value}


def release_diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pointer whose value differs between two release contents: added, removed or changed."""
    a, b = flatten(old), flatten(new)
    rows = []
    for pointer in sorted(set(a) | set(b)):
        if pointer not in a:
            rows.append({"pointer": pointer, "change": "added", "old": None, "new": b[pointer]})
        elif pointer not in b:
            rows.append({"pointer": pointer, "change": "removed", "old": a[pointer], "new": None})
        elif a[pointer] != b[pointer]:
            rows.append({"pointer": pointer, "change": "changed", "old": a[pointer], "new": b[pointer]})
    return rows
