"""The branding document (what a tenant edits and a release freezes), the release document, and the
typed external contracts of the bundle (manifest and design tokens).

Every contract here is a frozen dataclass; `branding/schemas/*.json` are generated from them
(`manage.py branding_schemas --write`) and a test fails when code and committed schemas disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DOCUMENT_SCHEMA_VERSION = 1
BUNDLE_SCHEMA_VERSION = 1

HEX = {"pattern": "^#[0-9A-Fa-f]{6}$"}
SHA256 = {"pattern": "^[0-9a-f]{64}$"}


def _meta(**schema: object) -> dict[str, object]:
    return {"schema": schema}


# --- the document a tenant edits --------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Names and platform identifiers of the app."""

    display_name: str = field(metadata=_meta(minLength=1, maxLength=30))
    short_name: str = field(metadata=_meta(minLength=1, maxLength=12))
    ios_bundle_id: str
    android_application_id: str
    url_scheme: str
    associated_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class ColorOverrides:
    """Colours that replace the generated scheme's roles (each `#RRGGBB`, or null for the generated one)."""

    primary: str | None = None
    on_primary: str | None = None
    secondary: str | None = None
    on_secondary: str | None = None
    tertiary: str | None = None
    on_tertiary: str | None = None
    error: str | None = None
    on_error: str | None = None
    surface: str | None = None
    on_surface: str | None = None


@dataclass(frozen=True)
class Colors:
    """A seed colour (Material 3 schemes are generated from it) and optional overrides per mode."""

    seed: str = field(metadata=_meta(**HEX))
    light: ColorOverrides = ColorOverrides()
    dark: ColorOverrides = ColorOverrides()


@dataclass(frozen=True)
class FontFace:
    """One uploaded font file (TTF or OTF) of a family."""

    family: str
    weight: int = field(metadata=_meta(minimum=100, maximum=900))
    style: Literal["normal", "italic"]
    asset: str = field(metadata=_meta(**SHA256))


@dataclass(frozen=True)
class FontWeights:
    regular: int = 400
    medium: int = 500
    bold: int = 700


@dataclass(frozen=True)
class Typography:
    """Font families for display (headlines) and body text; faces are the uploaded files."""

    display_family: str
    body_family: str
    faces: tuple[FontFace, ...] = ()
    weights: FontWeights = FontWeights()


@dataclass(frozen=True)
class Shape:
    """Corner-radius scale, in logical pixels."""

    extra_small: int = 4
    small: int = 8
    medium: int = 12
    large: int = 16
    extra_large: int = 28


@dataclass(frozen=True)
class Images:
    """Uploaded images by SHA-256, and the colours drawn behind them."""

    app_icon: str = field(metadata=_meta(**SHA256))
    adaptive_foreground: str = field(metadata=_meta(**SHA256))
    adaptive_monochrome: str = field(metadata=_meta(**SHA256))
    adaptive_background: str = field(metadata=_meta(**HEX))
    splash_background: str = field(metadata=_meta(**HEX))
    logo: str | None = None
    splash_image: str | None = None


@dataclass(frozen=True)
class LocaleCopy:
    """Texts and links shown in the app, in one locale (links are HTTPS)."""

    support_email: str
    support_url: str
    terms_url: str
    privacy_url: str
    about: str = ""


@dataclass(frozen=True)
class Copy:
    default_locale: str
    locales: dict[str, LocaleCopy]


@dataclass(frozen=True)
class Features:
    """Feature flags baked into the build and served at run time."""

    enabled_assets: tuple[str, ...] = ()
    enabled_chains: tuple[int, ...] = ()
    fiat_enabled: bool = True
    flags: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Runtime:
    """Where the app connects (HTTPS API, WSS stream) and its public app key."""

    api_base_url: str
    stream_url: str
    app_key: str


@dataclass(frozen=True)
class BrandDocument:
    """A tenant's branding: the draft while edited, frozen in a release once published."""

    identity: Identity
    colors: Colors
    typography: Typography
    images: Images
    copy: Copy
    runtime: Runtime
    shape: Shape = Shape()
    features: Features = Features()


# --- the release document (what the bundle is derived from) ------------------------------------------------


@dataclass(frozen=True)
class ColorScheme:
    """Every role of a resolved Material 3 colour scheme (generated from the seed, overrides applied)."""

    primary: str = field(metadata=_meta(**HEX))
    on_primary: str = field(metadata=_meta(**HEX))
    primary_container: str = field(metadata=_meta(**HEX))
    on_primary_container: str = field(metadata=_meta(**HEX))
    secondary: str = field(metadata=_meta(**HEX))
    on_secondary: str = field(metadata=_meta(**HEX))
    secondary_container: str = field(metadata=_meta(**HEX))
    on_secondary_container: str = field(metadata=_meta(**HEX))
    tertiary: str = field(metadata=_meta(**HEX))
    on_tertiary: str = field(metadata=_meta(**HEX))
    tertiary_container: str = field(metadata=_meta(**HEX))
    on_tertiary_container: str = field(metadata=_meta(**HEX))
    error: str = field(metadata=_meta(**HEX))
    on_error: str = field(metadata=_meta(**HEX))
    error_container: str = field(metadata=_meta(**HEX))
    on_error_container: str = field(metadata=_meta(**HEX))
    surface: str = field(metadata=_meta(**HEX))
    on_surface: str = field(metadata=_meta(**HEX))
    on_surface_variant: str = field(metadata=_meta(**HEX))
    surface_container_highest: str = field(metadata=_meta(**HEX))
    outline: str = field(metadata=_meta(**HEX))
    outline_variant: str = field(metadata=_meta(**HEX))
    inverse_surface: str = field(metadata=_meta(**HEX))
    on_inverse_surface: str = field(metadata=_meta(**HEX))
    inverse_primary: str = field(metadata=_meta(**HEX))
    shadow: str = field(metadata=_meta(**HEX))
    scrim: str = field(metadata=_meta(**HEX))
    surface_tint: str = field(metadata=_meta(**HEX))


@dataclass(frozen=True)
class Schemes:
    light: ColorScheme
    dark: ColorScheme


@dataclass(frozen=True)
class ReleaseDocument:
    """The frozen content of a release: the brand as published and its resolved colour schemes and
    tonal palettes (so a later library upgrade cannot change an old release's bundle)."""

    schema_version: int
    brand: BrandDocument
    schemes: Schemes
    palettes: dict[str, dict[str, str]]


# --- the bundle's manifest --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFile:
    path: str
    sha256: str = field(metadata=_meta(**SHA256))
    size: int = field(metadata=_meta(minimum=0))


@dataclass(frozen=True)
class Manifest:
    """`manifest.json` of a branding bundle: what it contains, with a SHA-256 of every other file."""

    schema_version: int
    tenant: str
    release: int = field(metadata=_meta(minimum=1))
    content_hash: str = field(metadata=_meta(**SHA256))
    files: tuple[ManifestFile, ...]


# --- design tokens (W3C Design Tokens Community Group format) ---------------------------------------------


@dataclass(frozen=True)
class ColorToken:
    type: Literal["color"] = field(metadata={"json": "$type"})
    value: str = field(metadata={"json": "$value", "schema": HEX})


@dataclass(frozen=True)
class DimensionValue:
    value: int
    unit: Literal["px"]


@dataclass(frozen=True)
class DimensionToken:
    type: Literal["dimension"] = field(metadata={"json": "$type"})
    value: DimensionValue = field(metadata={"json": "$value"})


@dataclass(frozen=True)
class FontFamilyToken:
    type: Literal["fontFamily"] = field(metadata={"json": "$type"})
    value: tuple[str, ...] = field(metadata={"json": "$value"})


@dataclass(frozen=True)
class FontWeightToken:
    type: Literal["fontWeight"] = field(metadata={"json": "$type"})
    value: int = field(metadata={"json": "$value"})


@dataclass(frozen=True)
class ColorSchemeTokens:
    """One mode's colour roles as tokens (camelCase names, as in Flutter's ColorScheme)."""

    primary: ColorToken
    onPrimary: ColorToken
    primaryContainer: ColorToken
    onPrimaryContainer: ColorToken
    secondary: ColorToken
    onSecondary: ColorToken
    secondaryContainer: ColorToken
    onSecondaryContainer: ColorToken
    tertiary: ColorToken
    onTertiary: ColorToken
    tertiaryContainer: ColorToken
    onTertiaryContainer: ColorToken
    error: ColorToken
    onError: ColorToken
    errorContainer: ColorToken
    onErrorContainer: ColorToken
    surface: ColorToken
    onSurface: ColorToken
    onSurfaceVariant: ColorToken
    surfaceContainerHighest: ColorToken
    outline: ColorToken
    outlineVariant: ColorToken
    inverseSurface: ColorToken
    onInverseSurface: ColorToken
    inversePrimary: ColorToken
    shadow: ColorToken
    scrim: ColorToken
    surfaceTint: ColorToken


@dataclass(frozen=True)
class ColorTokens:
    light: ColorSchemeTokens
    dark: ColorSchemeTokens
    seed: ColorToken
    palette: dict[str, dict[str, ColorToken]]


@dataclass(frozen=True)
class RadiusTokens:
    extraSmall: DimensionToken
    small: DimensionToken
    medium: DimensionToken
    large: DimensionToken
    extraLarge: DimensionToken


@dataclass(frozen=True)
class FontTokens:
    display: FontFamilyToken
    body: FontFamilyToken
    weightRegular: FontWeightToken
    weightMedium: FontWeightToken
    weightBold: FontWeightToken


@dataclass(frozen=True)
class DesignTokens:
    """`tokens/brand.tokens.json`: the brand as W3C DTCG design tokens."""

    color: ColorTokens
    radius: RadiusTokens
    font: FontTokens
