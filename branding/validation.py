"""Validation of branding documents and uploads. Every check answers with `Problem`s that point at the
failing field (RFC 6901), so the admin and the API can show them beside the field.

Rules: WCAG 2.2 contrast for every colour pair the theme draws (light and dark); image format,
dimensions and alpha; SVGs with scripts, event handlers, external references, `foreignObject` or any DTD
refused; fonts parsed by fontTools; iOS bundle id and Android application id rules; HTTPS-only links;
upload size limits.
"""

from __future__ import annotations

import io
import ipaddress
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from PIL import Image

from branding import conf
from branding.colors import HEX_RE, OVERRIDABLE_ROLES, contrast_problems, resolve_scheme
from branding.document import BrandDocument, ColorOverrides
from branding.typed import Problem, parse

# --- identity rules ---------------------------------------------------------------------------------------

IOS_BUNDLE_ID_RE = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
ANDROID_SEGMENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
URL_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]{1,63}$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
LOCALE_RE = re.compile(r"^[a-z]{2,3}(?:[-_](?:[A-Z]{2}|[A-Z][a-z]{3}))?$")
FLAG_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
FAMILY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 \-]{0,62}$")
RESERVED_SCHEMES = frozenset({"http", "https", "file", "ftp", "mailto", "tel", "sms", "data", "javascript",
                              "about", "content", "intent", "market", "itms", "itms-apps", "facetime", "maps"})
JAVA_KEYWORDS = frozenset("""abstract assert boolean break byte case catch char class const continue default do
double else enum extends final finally float for goto if implements import instanceof int interface long native
new package private protected public return short static strictfp super switch synchronized this throw throws
transient try void volatile while true false null var record yield sealed permits""".split())


def ios_bundle_id_problems(value: str, pointer: str) -> list[Problem]:
    if len(value) > 155 or not IOS_BUNDLE_ID_RE.match(value):
        return [Problem(pointer, "invalid_bundle_id", "An iOS bundle id is two or more dot-separated parts of "
                        "letters, digits and hyphens (reverse DNS, at most 155 characters).")]
    if value.lower().startswith("com.apple."):
        return [Problem(pointer, "reserved_bundle_id", "Bundle ids under com.apple. are reserved.")]
    return []


def android_application_id_problems(value: str, pointer: str) -> list[Problem]:
    segments = value.split(".")
    if len(segments) < 2 or len(value) > 150 or not all(ANDROID_SEGMENT_RE.match(s) for s in segments):
        return [Problem(pointer, "invalid_application_id", "An Android application id has two or more "
                        "dot-separated segments, each starting with a letter, of letters, digits and underscores.")]
    keywords = [s for s in segments if s in JAVA_KEYWORDS]
    if keywords:
        return [Problem(pointer, "invalid_application_id", f"Java keywords cannot be segments: {', '.join(keywords)}.")]
    return []


def https_url_problems(value: str, pointer: str, *, scheme: str = "https") -> list[Problem]:
    parts = urlsplit(value)
    if parts.scheme != scheme or not parts.hostname or parts.username or parts.password or " " in value:
        return [Problem(pointer, f"{scheme}_required", f"Use an absolute {scheme}:// URL without credentials.")]
    return []


def hex_problems(value: str | None, pointer: str) -> list[Problem]:
    if value is not None and not HEX_RE.match(value):
        return [Problem(pointer, "invalid_color", "Use a colour of the form #RRGGBB.")]
    return []


# --- the document -----------------------------------------------------------------------------------------

AssetLoader = Callable[[str], bytes | None]


@dataclass(frozen=True)
class Checked:
    """A parsed document with its resolved schemes, or the problems that stopped it."""

    document: BrandDocument | None
    schemes: dict[str, dict[str, str]] | None
    problems: list[Problem]


def check_document(data: object, load_asset: AssetLoader | None = None) -> Checked:
    """Parse and validate a branding document; `load_asset(sha256)` gives an upload's bytes (or None)."""
    problems: list[Problem] = []
    document = parse(BrandDocument, data, problems)
    if document is None:
        return Checked(None, None, problems)
    problems.extend(_identity_problems(document))
    schemes, colour_problems = _colour_problems(document)
    problems.extend(colour_problems)
    problems.extend(_typography_problems(document, load_asset))
    problems.extend(_image_problems(document, load_asset))
    problems.extend(_copy_problems(document))
    problems.extend(_runtime_problems(document))
    problems.extend(_shape_and_feature_problems(document))
    return Checked(document, schemes, problems)


def _identity_problems(document: BrandDocument) -> list[Problem]:
    identity = document.identity
    out: list[Problem] = []
    for name, value, limit in (("display_name", identity.display_name, 30), ("short_name", identity.short_name, 12)):
        if not value.strip() or len(value) > limit or any(ord(c) < 32 or c in '<>"&' for c in value):
            out.append(Problem(f"/identity/{name}", "invalid_name",
                               f"1-{limit} characters, no control characters and none of < > \" &."))
    out += ios_bundle_id_problems(identity.ios_bundle_id, "/identity/ios_bundle_id")
    out += android_application_id_problems(identity.android_application_id, "/identity/android_application_id")
    if not URL_SCHEME_RE.match(identity.url_scheme) or identity.url_scheme in RESERVED_SCHEMES:
        out.append(Problem("/identity/url_scheme", "invalid_url_scheme",
                           "A URL scheme is 2-64 lowercase letters, digits, + . - starting with a letter, "
                           "and not a reserved scheme (http, tel, ...)."))
    for index, domain in enumerate(identity.associated_domains):
        if not HOSTNAME_RE.match(domain):
            out.append(Problem(f"/identity/associated_domains/{index}", "invalid_domain",
                               "A lowercase DNS host name, without scheme or path."))
    return out


def _colour_problems(document: BrandDocument) -> tuple[dict[str, dict[str, str]] | None, list[Problem]]:
    colors = document.colors
    out = hex_problems(colors.seed, "/colors/seed")
    for mode in ("light", "dark"):
        overrides: ColorOverrides = getattr(colors, mode)
        for role in OVERRIDABLE_ROLES:
            out += hex_problems(getattr(overrides, role), f"/colors/{mode}/{role}")
    if out:
        return None, out
    schemes = {mode: resolve_scheme(colors.seed, {r: getattr(getattr(colors, mode), r) for r in OVERRIDABLE_ROLES},
                                    dark=mode == "dark") for mode in ("light", "dark")}
    for problem in contrast_problems(schemes):
        overrides = getattr(colors, problem.mode)
        # Point at the colour the tenant chose; a pair of two generated colours points at the seed.
        chosen = [r for r in (problem.pair.foreground, problem.pair.background)
                  if r in OVERRIDABLE_ROLES and getattr(overrides, r)]
        pointer = f"/colors/{problem.mode}/{chosen[0]}" if chosen else "/colors/seed"
        out.append(Problem(
            pointer, "contrast_too_low",
            f"{problem.mode}: {problem.pair.foreground} {problem.foreground} on {problem.pair.background} "
            f"{problem.background} has contrast {problem.ratio:.2f}:1; WCAG 2.2 needs "
            f"{problem.pair.minimum:g}:1 for {'text' if problem.pair.kind == 'text' else 'UI components'}."))
    return schemes, out


def _typography_problems(document: BrandDocument, load_asset: AssetLoader | None) -> list[Problem]:
    typography = document.typography
    out = []
    for name in ("display_family", "body_family"):
        if not FAMILY_RE.match(getattr(typography, name)):
            out.append(Problem(f"/typography/{name}", "invalid_family", "1-63 letters, digits, spaces and hyphens."))
    seen = set()
    for index, face in enumerate(typography.faces):
        pointer = f"/typography/faces/{index}"
        if not FAMILY_RE.match(face.family):
            out.append(Problem(f"{pointer}/family", "invalid_family", "1-63 letters, digits, spaces and hyphens."))
        if face.weight % 100 or not 100 <= face.weight <= 900:
            out.append(Problem(f"{pointer}/weight", "invalid_weight", "A weight is 100, 200, ... 900."))
        key = (face.family, face.weight, face.style)
        if key in seen:
            out.append(Problem(pointer, "duplicate_face", "This family, weight and style is listed twice."))
        seen.add(key)
        out += _asset_problems(face.asset, "font", f"{pointer}/asset", load_asset)
    for name, value in (("regular", typography.weights.regular), ("medium", typography.weights.medium),
                        ("bold", typography.weights.bold)):
        if value % 100 or not 100 <= value <= 900:
            out.append(Problem(f"/typography/weights/{name}", "invalid_weight", "A weight is 100, 200, ... 900."))
    return out


def _image_problems(document: BrandDocument, load_asset: AssetLoader | None) -> list[Problem]:
    images = document.images
    out = hex_problems(images.adaptive_background, "/images/adaptive_background")
    out += hex_problems(images.splash_background, "/images/splash_background")
    for usage in ("app_icon", "adaptive_foreground", "adaptive_monochrome", "logo", "splash_image"):
        sha = getattr(images, usage)
        if sha is not None:
            out += _asset_problems(sha, usage, f"/images/{usage}", load_asset)
    return out


def _asset_problems(sha: str, usage: str, pointer: str, load_asset: AssetLoader | None) -> list[Problem]:
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        return [Problem(pointer, "invalid_asset", "An uploaded file's SHA-256 (64 lowercase hex digits).")]
    if load_asset is None:
        return []
    data = load_asset(sha)
    if data is None:
        return [Problem(pointer, "asset_not_found", "No uploaded file of this tenant has this SHA-256.")]
    return check_upload(usage, data, pointer).problems


def _copy_problems(document: BrandDocument) -> list[Problem]:
    copy = document.copy
    out = []
    if not copy.locales:
        out.append(Problem("/copy/locales", "required", "At least one locale is required."))
    elif copy.default_locale not in copy.locales:
        out.append(Problem("/copy/default_locale", "unknown_locale", "The default locale must be one of the locales."))
    for locale, texts in copy.locales.items():
        pointer = f"/copy/locales/{locale}"
        if not LOCALE_RE.match(locale):
            out.append(Problem(pointer, "invalid_locale", "A locale like en, pt-BR or zh-Hant."))
        try:
            validate_email(texts.support_email)
        except ValidationError:
            out.append(Problem(f"{pointer}/support_email", "invalid_email", "A valid email address."))
        for name in ("support_url", "terms_url", "privacy_url"):
            out += https_url_problems(getattr(texts, name), f"{pointer}/{name}")
        if len(texts.about) > 4000:
            out.append(Problem(f"{pointer}/about", "too_long", "At most 4000 characters."))
    return out


def _runtime_problems(document: BrandDocument) -> list[Problem]:
    runtime = document.runtime
    out = https_url_problems(runtime.api_base_url, "/runtime/api_base_url")
    out += https_url_problems(runtime.stream_url, "/runtime/stream_url", scheme="wss")
    if not re.fullmatch(r"app_[A-Za-z0-9_-]{8,60}", runtime.app_key):
        out.append(Problem("/runtime/app_key", "invalid_app_key", "One of the tenant's app keys (app_...)."))
    return out


def _shape_and_feature_problems(document: BrandDocument) -> list[Problem]:
    out = []
    for name in ("extra_small", "small", "medium", "large", "extra_large"):
        value = getattr(document.shape, name)
        if not 0 <= value <= 64:
            out.append(Problem(f"/shape/{name}", "out_of_range", "A corner radius is 0-64 logical pixels."))
    for key in document.features.flags:
        if not FLAG_RE.match(key):
            out.append(Problem(f"/features/flags/{key}", "invalid_flag", "Flag names are snake_case."))
    for index, code in enumerate(document.features.enabled_assets):
        if not re.fullmatch(r"[A-Z0-9]{2,12}(:[0-9]{1,10})?", code):
            out.append(Problem(f"/features/enabled_assets/{index}", "invalid_asset_code", "An asset code like USD."))
    for index, chain in enumerate(document.features.enabled_chains):
        if chain <= 0:
            out.append(Problem(f"/features/enabled_chains/{index}", "invalid_chain", "A positive EIP-155 chain id."))
    return out


# --- uploads ----------------------------------------------------------------------------------------------

PNG = "image/png"
SVG = "image/svg+xml"
TTF = "font/ttf"
OTF = "font/otf"
USAGES = ("app_icon", "adaptive_foreground", "adaptive_monochrome", "logo", "splash_image", "font")
MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class UploadCheck:
    media_type: str | None
    width: int | None
    height: int | None
    problems: list[Problem]


def check_upload(usage: str, data: bytes, pointer: str = "/file") -> UploadCheck:
    """Check an upload's bytes for `usage` (app_icon, adaptive_foreground, adaptive_monochrome, logo,
    splash_image, font)."""
    if usage not in USAGES:
        return UploadCheck(None, None, None, [Problem(pointer, "invalid_usage", f"Usage is one of {USAGES}.")])
    if usage == "font":
        return _check_font(data, pointer)
    if usage == "logo" and not data.startswith(b"\x89PNG"):
        return _check_svg(data, pointer)
    return _check_png(usage, data, pointer)


def _too_large(data: bytes, limit: int, pointer: str) -> list[Problem]:
    if len(data) > limit:
        return [Problem(pointer, "file_too_large", f"The file is {len(data)} bytes; the limit is {limit}.")]
    return []


def _looks_like_svg(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith(b"<?xml") or head.startswith(b"<svg") or head.startswith(b"<!doctype") or b"<svg" in head


PNG_RULES: dict[str, dict[str, object]] = {
    # usage: exact size or min/max, square, alpha allowed/required
    "app_icon": {"exact": (1024, 1024), "alpha": "forbidden"},
    "adaptive_foreground": {"square": True, "min": 432, "max": 1024, "alpha": "required"},
    "adaptive_monochrome": {"square": True, "min": 432, "max": 1024, "alpha": "required"},
    "logo": {"min": 64, "max": 2048, "alpha": "allowed"},
    "splash_image": {"min": 192, "max": 4096, "alpha": "allowed"},
}


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (image.mode == "P" and "transparency" in image.info)


def _check_png(usage: str, data: bytes, pointer: str) -> UploadCheck:
    problems = _too_large(data, conf.max_image_bytes(), pointer)
    if problems:
        return UploadCheck(None, None, None, problems)
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        hint = "; SVG is accepted only for the logo" if _looks_like_svg(data) else ""
        return UploadCheck(None, None, None, [Problem(pointer, "invalid_format", f"A PNG image is required{hint}.")])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                return UploadCheck(PNG, width, height, [Problem(pointer, "image_too_large",
                                                                f"At most {MAX_PIXELS} pixels.")])
            image.verify()  # checksums and structure, without decoding everything twice
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return UploadCheck(None, None, None, [Problem(pointer, "image_too_large", "The image is too large.")])
    except Exception:
        return UploadCheck(None, None, None, [Problem(pointer, "invalid_image", "The PNG cannot be decoded.")])
    if image.format != "PNG":
        return UploadCheck(None, width, height, [Problem(pointer, "invalid_format", "A PNG image is required.")])
    rules = PNG_RULES[usage]
    problems = []
    exact = rules.get("exact")
    if exact and (width, height) != exact:
        problems.append(Problem(pointer, "invalid_dimensions", f"The image must be {exact[0]}x{exact[1]} pixels; "
                                f"it is {width}x{height}."))
    if rules.get("square") and width != height:
        problems.append(Problem(pointer, "invalid_dimensions", f"The image must be square; it is {width}x{height}."))
    minimum, maximum = rules.get("min"), rules.get("max")
    if minimum and min(width, height) < minimum:  # type: ignore[operator]
        problems.append(Problem(pointer, "invalid_dimensions",
                                f"At least {minimum} pixels a side; it is {width}x{height}."))
    if maximum and max(width, height) > maximum:  # type: ignore[operator]
        problems.append(Problem(pointer, "invalid_dimensions",
                                f"At most {maximum} pixels a side; it is {width}x{height}."))
    alpha = rules["alpha"]
    if alpha == "forbidden" and _has_alpha(image):
        problems.append(Problem(pointer, "alpha_not_allowed", "The app icon must have no alpha channel "
                                "(the App Store refuses transparent icons)."))
    if alpha == "required" and not _has_alpha(image):
        problems.append(Problem(pointer, "alpha_required", "An adaptive icon layer needs transparency "
                                "(an alpha channel)."))
    return UploadCheck(PNG, width, height, problems)


SVG_NS = "{http://www.w3.org/2000/svg}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
FORBIDDEN_SVG_ELEMENTS = frozenset({"script", "foreignobject", "iframe", "embed", "object", "handler", "listener",
                                    "set", "animate", "animatetransform", "animatemotion"})
_CSS_URL_RE = re.compile(r"url\(\s*['\"]?\s*(?!#)", re.IGNORECASE)


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].lower()


def _check_svg(data: bytes, pointer: str) -> UploadCheck:
    problems = _too_large(data, conf.max_svg_bytes(), pointer)
    if problems:
        return UploadCheck(SVG, None, None, problems)
    if b"<?xml-stylesheet" in data:
        return UploadCheck(SVG, None, None, [Problem(pointer, "svg_external_reference",
                                                     "External stylesheets are not allowed.")])
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        return UploadCheck(SVG, None, None, [Problem(pointer, "svg_dtd_not_allowed",
                                                     "SVGs with a DOCTYPE or entities are not allowed.")])
    except Exception:
        return UploadCheck(SVG, None, None, [Problem(pointer, "invalid_svg", "The SVG is not well-formed XML.")])
    if root.tag != SVG_NS + "svg":
        return UploadCheck(SVG, None, None, [Problem(pointer, "invalid_svg", "The root element must be an SVG <svg>.")])
    found: list[Problem] = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        name = _local(element.tag)
        if name in FORBIDDEN_SVG_ELEMENTS:
            code = "svg_script" if name in ("script", "handler", "listener") else "svg_forbidden_element"
            found.append(Problem(pointer, code, f"<{name}> elements are not allowed in an SVG logo."))
        if name == "style" and element.text and (_CSS_URL_RE.search(element.text) or "@import" in element.text):
            found.append(Problem(pointer, "svg_external_reference", "Stylesheets may not load external resources."))
        for attribute, value in element.attrib.items():
            local = _local(attribute)
            if local.startswith("on"):
                found.append(Problem(pointer, "svg_event_handler",
                                     f"Event handler attributes ({local}) are not allowed."))
            elif local == "href" or attribute == XLINK_HREF:
                if not value.strip().startswith("#"):
                    found.append(Problem(pointer, "svg_external_reference",
                                         "Only references inside the SVG (#id) are allowed."))
            elif _CSS_URL_RE.search(value) or "javascript:" in value.lower():
                found.append(Problem(pointer, "svg_external_reference",
                                     f"The {local} attribute refers to an external resource."))
    unique = list(dict.fromkeys(found))
    return UploadCheck(SVG, None, None, unique)


def _check_font(data: bytes, pointer: str) -> UploadCheck:
    from fontTools.ttLib import TTFont, TTLibError

    problems = _too_large(data, conf.max_font_bytes(), pointer)
    if problems:
        return UploadCheck(None, None, None, problems)
    signature = data[:4]
    if signature not in (b"\x00\x01\x00\x00", b"OTTO", b"true"):
        return UploadCheck(None, None, None, [Problem(pointer, "invalid_font", "A TrueType (.ttf) or OpenType "
                                                      "(.otf) font is required.")])
    try:
        font = TTFont(io.BytesIO(data), lazy=False)
        tables = set(font.keys())
        cmap = font.getBestCmap() if "cmap" in tables else None
        has_name = "name" in tables and font["name"].getDebugName(1) is not None
    except (TTLibError, Exception):
        return UploadCheck(None, None, None, [Problem(pointer, "invalid_font", "The font file cannot be parsed.")])
    missing = {"head", "hhea", "hmtx", "maxp", "cmap", "name"} - tables
    if not ({"glyf", "loca"} <= tables or "CFF " in tables or "CFF2" in tables):
        missing.add("glyf or CFF")
    if missing or not cmap or not has_name:
        lacking = ", ".join(sorted(missing)) or "cmap/name"
        return UploadCheck(None, None, None, [Problem(pointer, "invalid_font",
                                                      f"The font lacks required tables ({lacking}).")])
    return UploadCheck(OTF if signature == b"OTTO" else TTF, None, None, [])


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """False for loopback, private, link-local (incl. cloud metadata), shared, multicast, reserved and
    unspecified addresses; IPv4-mapped and NAT64-embedded IPv6 are judged by their IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address in ipaddress.ip_network("fd00:ec2::/32"):  # AWS metadata over IPv6
            return False
    if address.version == 4 and address in ipaddress.ip_network("100.64.0.0/10"):  # carrier-grade NAT
        return False
    return not (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_reserved or address.is_unspecified or not address.is_global)
