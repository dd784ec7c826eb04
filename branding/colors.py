"""Colour science for branding: Material 3 schemes from a seed (materialyoucolor) and WCAG 2.2 contrast.

Schemes use the 2021 Material colour spec with the tonal-spot variant, which is what Flutter's
`ColorScheme.fromSeed` produces, so a seed gives the app the same colours here and in Flutter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from materialyoucolor.dynamiccolor.material_dynamic_colors import MaterialDynamicColors
from materialyoucolor.hct import Hct
from materialyoucolor.scheme.scheme_tonal_spot import SchemeTonalSpot

HEX_RE = re.compile(r"^#[0-9A-Fa-f]{6}$")
SPEC_VERSION = "2021"

#: Scheme roles we emit (snake_case here; camelCase in Dart and in materialyoucolor).
SCHEME_ROLES: tuple[str, ...] = (
    "primary", "on_primary", "primary_container", "on_primary_container",
    "secondary", "on_secondary", "secondary_container", "on_secondary_container",
    "tertiary", "on_tertiary", "tertiary_container", "on_tertiary_container",
    "error", "on_error", "error_container", "on_error_container",
    "surface", "on_surface", "on_surface_variant", "surface_container_highest",
    "outline", "outline_variant", "inverse_surface", "on_inverse_surface", "inverse_primary",
    "shadow", "scrim", "surface_tint",
)

#: Roles a tenant may override (each with its "on" colour).
OVERRIDABLE_ROLES: tuple[str, ...] = (
    "primary", "on_primary", "secondary", "on_secondary", "tertiary", "on_tertiary",
    "error", "on_error", "surface", "on_surface",
)

TEXT_MINIMUM = 4.5  # WCAG 2.2 SC 1.4.3, normal text
UI_MINIMUM = 3.0  # WCAG 2.2 SC 1.4.11, user interface components


@dataclass(frozen=True)
class ContrastPair:
    """A foreground drawn on a background in the theme, and the contrast it needs."""

    foreground: str
    background: str
    minimum: float
    kind: str  # "text" or "ui"


#: Every pair the generated theme draws: text on its container, and UI components on the surface.
CONTRAST_PAIRS: tuple[ContrastPair, ...] = (
    ContrastPair("on_primary", "primary", TEXT_MINIMUM, "text"),
    ContrastPair("on_secondary", "secondary", TEXT_MINIMUM, "text"),
    ContrastPair("on_tertiary", "tertiary", TEXT_MINIMUM, "text"),
    ContrastPair("on_error", "error", TEXT_MINIMUM, "text"),
    ContrastPair("on_surface", "surface", TEXT_MINIMUM, "text"),
    ContrastPair("on_surface_variant", "surface", TEXT_MINIMUM, "text"),
    ContrastPair("on_primary_container", "primary_container", TEXT_MINIMUM, "text"),
    ContrastPair("on_secondary_container", "secondary_container", TEXT_MINIMUM, "text"),
    ContrastPair("on_tertiary_container", "tertiary_container", TEXT_MINIMUM, "text"),
    ContrastPair("on_error_container", "error_container", TEXT_MINIMUM, "text"),
    ContrastPair("on_inverse_surface", "inverse_surface", TEXT_MINIMUM, "text"),
    ContrastPair("primary", "surface", UI_MINIMUM, "ui"),
    ContrastPair("error", "surface", UI_MINIMUM, "ui"),
    ContrastPair("outline", "surface", UI_MINIMUM, "ui"),
)


_LIBRARY_NAMES = {"on_inverse_surface": "inverseOnSurface"}


def _camel(role: str) -> str:
    head, *rest = role.split("_")
    return head + "".join(part.capitalize() for part in rest)


def hex_to_argb(value: str) -> int:
    return 0xFF000000 | int(value[1:], 16)


def argb_to_hex(argb: int) -> str:
    return f"#{argb & 0xFFFFFF:06X}"


def scheme_from_seed(seed: str, *, dark: bool) -> dict[str, str]:
    """Every role of the Material 3 (2021 spec, tonal spot) scheme generated from `seed` (`#RRGGBB`)."""
    scheme = SchemeTonalSpot(Hct.from_int(hex_to_argb(seed)), dark, 0.0, spec_version=SPEC_VERSION)
    colors = MaterialDynamicColors(spec=SPEC_VERSION)
    out = {}
    for role in SCHEME_ROLES:
        dynamic = getattr(colors, _LIBRARY_NAMES.get(role) or _camel(role))
        out[role] = argb_to_hex(dynamic.get_argb(scheme))
    return out


def tonal_palettes(seed: str) -> dict[str, dict[int, str]]:
    """The key tonal palettes (tones 0-100) of the seed's scheme, for the design tokens."""
    scheme = SchemeTonalSpot(Hct.from_int(hex_to_argb(seed)), False, 0.0, spec_version=SPEC_VERSION)
    tones = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 100)
    palettes = {
        "primary": scheme.primary_palette, "secondary": scheme.secondary_palette,
        "tertiary": scheme.tertiary_palette, "neutral": scheme.neutral_palette,
        "neutral_variant": scheme.neutral_variant_palette, "error": scheme.error_palette,
    }
    return {name: {tone: argb_to_hex(palette.tone(tone)) for tone in tones} for name, palette in palettes.items()}


def _linear(channel: int) -> float:
    value = channel / 255
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def relative_luminance(hex_color: str) -> float:
    """WCAG 2.2 relative luminance of an sRGB colour."""
    raw = int(hex_color[1:], 16)
    red, green, blue = (raw >> 16) & 0xFF, (raw >> 8) & 0xFF, raw & 0xFF
    return 0.2126 * _linear(red) + 0.7152 * _linear(green) + 0.0722 * _linear(blue)


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2.2 contrast ratio (1 to 21) of two `#RRGGBB` colours."""
    a, b = relative_luminance(first), relative_luminance(second)
    lighter, darker = max(a, b), min(a, b)
    return (lighter + 0.05) / (darker + 0.05)


def resolve_scheme(seed: str, overrides: dict[str, str | None], *, dark: bool) -> dict[str, str]:
    """The seed's generated scheme with the tenant's overrides applied."""
    scheme = scheme_from_seed(seed, dark=dark)
    for role, value in overrides.items():
        if value:
            scheme[role] = value.upper()
    return scheme


@dataclass(frozen=True)
class ContrastProblem:
    mode: str  # "light" or "dark"
    pair: ContrastPair
    ratio: float
    foreground: str
    background: str


def contrast_problems(schemes: dict[str, dict[str, str]]) -> list[ContrastProblem]:
    """Every pair of every mode below its WCAG minimum."""
    problems = []
    for mode in ("light", "dark"):
        scheme = schemes[mode]
        for pair in CONTRAST_PAIRS:
            ratio = contrast_ratio(scheme[pair.foreground], scheme[pair.background])
            if ratio + 1e-9 < pair.minimum:
                problems.append(ContrastProblem(mode, pair, ratio, scheme[pair.foreground], scheme[pair.background]))
    return problems
