"""The export bundle a Flutter build consumes unchanged, derived from a release alone.

`bundle_files(release)` returns every file as `{path: bytes}`; `write_zip` and `write_directory` write
them. The same release always gives the same bytes: files in sorted order, fixed zip timestamps and
permissions, PNGs resized and encoded deterministically (Pillow, no metadata chunks), JSON with sorted keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from branding.document import (
    BUNDLE_SCHEMA_VERSION,
    ColorSchemeTokens,
    ColorToken,
    ColorTokens,
    DesignTokens,
    DimensionToken,
    DimensionValue,
    FontFamilyToken,
    FontTokens,
    FontWeightToken,
    Manifest,
    ManifestFile,
    RadiusTokens,
    ReleaseDocument,
)
from branding.release import load_release
from branding.typed import dump

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ANDROID_RES = "android/app/src/main/res"
IOS_ICONSET = "ios/Runner/Assets.xcassets/AppIcon.appiconset"
LAUNCHER_SIZES = {"mdpi": 48, "hdpi": 72, "xhdpi": 96, "xxhdpi": 144, "xxxhdpi": 192}
ADAPTIVE_SIZES = {"mdpi": 108, "hdpi": 162, "xhdpi": 216, "xxhdpi": 324, "xxxhdpi": 432}
# (idiom, size in points, scale): the full classic set, as Flutter's template lists it.
IOS_ICONS: tuple[tuple[str, str, int], ...] = (
    ("iphone", "20", 2), ("iphone", "20", 3), ("iphone", "29", 1), ("iphone", "29", 2), ("iphone", "29", 3),
    ("iphone", "40", 2), ("iphone", "40", 3), ("iphone", "60", 2), ("iphone", "60", 3),
    ("ipad", "20", 1), ("ipad", "20", 2), ("ipad", "29", 1), ("ipad", "29", 2), ("ipad", "40", 1),
    ("ipad", "40", 2), ("ipad", "76", 1), ("ipad", "76", 2), ("ipad", "83.5", 2),
    ("ios-marketing", "1024", 1),
)

AssetLoader = Callable[[str], bytes | None]


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


class _Png:
    """Resizes one source image to many sizes, each encoded once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.image = Image.open(io.BytesIO(data))
        self.image.load()
        self._sizes: dict[int, bytes] = {}

    def at(self, size: int) -> bytes:
        if size not in self._sizes:
            if self.image.size == (size, size):
                self._sizes[size] = self.data
            else:
                resized = self.image.resize((size, size), Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                resized.save(buffer, format="PNG", optimize=False, compress_level=6)
                self._sizes[size] = buffer.getvalue()
        return self._sizes[size]


def bundle_files(*, tenant_slug: str, number: int, content_hash: str, content: dict[str, Any],
                 load_asset: AssetLoader) -> dict[str, bytes]:
    """Every file of the release's bundle, `manifest.json` included, keyed by path."""
    release = load_release(content)

    def asset(sha: str) -> bytes:
        data = load_asset(sha)
        if data is None:
            raise FileNotFoundError(f"branding asset {sha} is missing from storage")
        return data

    files: dict[str, bytes] = {}
    files["tokens/brand.tokens.json"] = _json(dump(design_tokens(release)))
    files["flutter/lib/brand/brand.g.dart"] = dart_theme(release, number=number, content_hash=content_hash).encode()
    files["config/runtime.json"] = _json(runtime_config(release, number=number))
    files.update(_android(release, asset))
    files.update(_ios(release, asset))
    files.update(_flutter_assets(release, asset))
    manifest = Manifest(
        schema_version=BUNDLE_SCHEMA_VERSION, tenant=tenant_slug, release=number, content_hash=content_hash,
        files=tuple(ManifestFile(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                    for path, data in sorted(files.items())),
    )
    files["manifest.json"] = _json(dump(manifest))
    return dict(sorted(files.items()))


def write_zip(files: dict[str, bytes], target: io.BufferedIOBase | str | os.PathLike[str]) -> None:
    """A reproducible zip: sorted entries, fixed timestamp, permissions and attributes."""
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100644 & 0xFFFF) << 16
            info.create_system = 3
            archive.writestr(info, files[path], compresslevel=6)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    write_zip(files, buffer)
    return buffer.getvalue()


def write_directory(files: dict[str, bytes], directory: Path) -> None:
    for path, data in sorted(files.items()):
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o644)


# --- design tokens ----------------------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _color(value: str) -> ColorToken:
    return ColorToken(type="color", value=value.upper())


def _dimension(value: int) -> DimensionToken:
    return DimensionToken(type="dimension", value=DimensionValue(value=value, unit="px"))


def design_tokens(release: ReleaseDocument) -> DesignTokens:
    def scheme_tokens(scheme: Any) -> ColorSchemeTokens:
        values = dump(scheme)
        return ColorSchemeTokens(**{_camel(role): _color(value) for role, value in values.items()})

    brand = release.brand
    shape = brand.shape
    typography = brand.typography
    return DesignTokens(
        color=ColorTokens(
            light=scheme_tokens(release.schemes.light), dark=scheme_tokens(release.schemes.dark),
            seed=_color(brand.colors.seed),
            palette={_camel(name): {tone: _color(value) for tone, value in tones.items()}
                     for name, tones in release.palettes.items()},
        ),
        radius=RadiusTokens(extraSmall=_dimension(shape.extra_small), small=_dimension(shape.small),
                            medium=_dimension(shape.medium), large=_dimension(shape.large),
                            extraLarge=_dimension(shape.extra_large)),
        font=FontTokens(
            display=FontFamilyToken(type="fontFamily", value=(typography.display_family, "sans-serif")),
            body=FontFamilyToken(type="fontFamily", value=(typography.body_family, "sans-serif")),
            weightRegular=FontWeightToken(type="fontWeight", value=typography.weights.regular),
            weightMedium=FontWeightToken(type="fontWeight", value=typography.weights.medium),
            weightBold=FontWeightToken(type="fontWeight", value=typography.weights.bold),
        ),
    )


def runtime_config(release: ReleaseDocument, *, number: int) -> dict[str, Any]:
    brand = release.brand
    return {
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "release": number,
        "api_base_url": brand.runtime.api_base_url,
        "stream_url": brand.runtime.stream_url,
        "app_key": brand.runtime.app_key,
        "features": dump(brand.features),
        "default_locale": brand.copy.default_locale,
        "copy": dump(brand.copy.locales),
    }


# --- Dart -------------------------------------------------------------------------------------------------


def dart_string(value: str) -> str:
    escaped = (value.replace("\\", "\\\\").replace("'", "\\'").replace("$", "\\$").replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f"'{escaped}'"


def _dart_color(value: str) -> str:
    return f"Color(0xFF{value[1:].upper()})"


# Material 3 type scale: (name, size, line height, letter spacing, display family?, weight key)
TYPE_SCALE = (
    ("displayLarge", 57, 64, -0.25, True, "regular"), ("displayMedium", 45, 52, 0.0, True, "regular"),
    ("displaySmall", 36, 44, 0.0, True, "regular"), ("headlineLarge", 32, 40, 0.0, True, "regular"),
    ("headlineMedium", 28, 36, 0.0, True, "regular"), ("headlineSmall", 24, 32, 0.0, True, "regular"),
    ("titleLarge", 22, 28, 0.0, False, "regular"), ("titleMedium", 16, 24, 0.15, False, "medium"),
    ("titleSmall", 14, 20, 0.1, False, "medium"), ("bodyLarge", 16, 24, 0.5, False, "regular"),
    ("bodyMedium", 14, 20, 0.25, False, "regular"), ("bodySmall", 12, 16, 0.4, False, "regular"),
    ("labelLarge", 14, 20, 0.1, False, "medium"), ("labelMedium", 12, 16, 0.5, False, "medium"),
    ("labelSmall", 11, 16, 0.5, False, "medium"),
)


def dart_theme(release: ReleaseDocument, *, number: int, content_hash: str) -> str:
    brand = release.brand
    lines = [
        "// GENERATED by the Wallet BFF branding export. Do not edit: re-export the release instead.",
        f"// Release {number}, content sha256 {content_hash}.",
        "// ignore_for_file: type=lint",
        "",
        "import 'package:flutter/material.dart';",
        "",
        "/// Light and dark colour schemes of the brand (Material 3).",
        "abstract final class BrandColors {",
    ]
    for mode in ("light", "dark"):
        scheme = dump(getattr(release.schemes, mode))
        lines.append(f"  static const ColorScheme {mode} = ColorScheme(")
        lines.append(f"    brightness: Brightness.{mode},")
        for role, value in scheme.items():
            lines.append(f"    {_camel(role)}: {_dart_color(value)},")
        lines.append("  );")
        lines.append("")
    lines.append(f"  static const Color seed = {_dart_color(brand.colors.seed)};")
    lines.append(f"  static const Color adaptiveIconBackground = {_dart_color(brand.images.adaptive_background)};")
    lines.append(f"  static const Color splashBackground = {_dart_color(brand.images.splash_background)};")
    lines += ["}", "", "/// Font families, weights and the text theme.", "abstract final class BrandTypography {"]
    typography = brand.typography
    lines.append(f"  static const String displayFamily = {dart_string(typography.display_family)};")
    lines.append(f"  static const String bodyFamily = {dart_string(typography.body_family)};")
    weights = dump(typography.weights)
    for key, value in weights.items():
        lines.append(f"  static const FontWeight {key} = FontWeight.w{value};")
    lines.append("  static const TextTheme textTheme = TextTheme(")
    for name, size, height, spacing, display, weight in TYPE_SCALE:
        family = "displayFamily" if display else "bodyFamily"
        lines.append(f"    {name}: TextStyle(fontFamily: {family}, fontSize: {size}, height: {height / size:.4f}, "
                     f"letterSpacing: {spacing}, fontWeight: {weight}),")
    lines += ["  );", "}", "", "/// Corner-radius scale, in logical pixels.", "abstract final class BrandShape {"]
    for name, value in dump(brand.shape).items():
        lines.append(f"  static const double {_camel('radius_' + name)} = {value}.0;")
    identity = brand.identity
    runtime = brand.runtime
    lines += ["}", "", "/// Identity and runtime constants baked into the build.",
              "abstract final class BrandConstants {",
              f"  static const int release = {number};",
              f"  static const String contentHash = {dart_string(content_hash)};",
              f"  static const String displayName = {dart_string(identity.display_name)};",
              f"  static const String shortName = {dart_string(identity.short_name)};",
              f"  static const String iosBundleId = {dart_string(identity.ios_bundle_id)};",
              f"  static const String androidApplicationId = {dart_string(identity.android_application_id)};",
              f"  static const String urlScheme = {dart_string(identity.url_scheme)};",
              "  static const List<String> associatedDomains = <String>["
              + ", ".join(dart_string(d) for d in identity.associated_domains) + "];",
              f"  static const String apiBaseUrl = {dart_string(runtime.api_base_url)};",
              f"  static const String streamUrl = {dart_string(runtime.stream_url)};",
              f"  static const String appKey = {dart_string(runtime.app_key)};",
              f"  static const String defaultLocale = {dart_string(brand.copy.default_locale)};",
              "}", "", "/// Feature flags baked into the build (the runtime endpoint may serve newer ones).",
              "abstract final class BrandFlags {"]
    features = brand.features
    lines.append(f"  static const bool fiatEnabled = {'true' if features.fiat_enabled else 'false'};")
    lines.append("  static const List<String> enabledAssets = <String>["
                 + ", ".join(dart_string(a) for a in features.enabled_assets) + "];")
    lines.append("  static const List<int> enabledChains = <int>["
                 + ", ".join(str(c) for c in features.enabled_chains) + "];")
    lines.append("  static const Map<String, bool> flags = <String, bool>{"
                 + ", ".join(f"{dart_string(k)}: {'true' if v else 'false'}" for k, v in sorted(features.flags.items()))
                 + "};")
    lines += [
        "}", "",
        "/// The brand's ThemeData for a brightness.",
        "ThemeData brandTheme(Brightness brightness) {",
        "  final ColorScheme scheme = brightness == Brightness.dark ? BrandColors.dark : BrandColors.light;",
        "  return ThemeData(",
        "    useMaterial3: true,",
        "    colorScheme: scheme,",
        "    textTheme: BrandTypography.textTheme,",
        "    fontFamily: BrandTypography.bodyFamily,",
        "  );",
        "}",
        "",
    ]
    return "\n".join(lines)


# --- Android ----------------------------------------------------------------------------------------------


def _xml_text(value: str) -> str:
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # Android resource strings also treat quotes, apostrophes and @/? at the start specially.
    escaped = escaped.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"')
    if escaped[:1] in ("@", "?"):
        escaped = "\\" + escaped
    return escaped


def _android(release: ReleaseDocument, asset: Callable[[str], bytes]) -> dict[str, bytes]:
    brand = release.brand
    files: dict[str, bytes] = {}
    icon = _Png(asset(brand.images.app_icon))
    foreground = _Png(asset(brand.images.adaptive_foreground))
    monochrome = _Png(asset(brand.images.adaptive_monochrome))
    for density, size in LAUNCHER_SIZES.items():
        files[f"{ANDROID_RES}/mipmap-{density}/ic_launcher.png"] = icon.at(size)
    for density, size in ADAPTIVE_SIZES.items():
        files[f"{ANDROID_RES}/mipmap-{density}/ic_launcher_foreground.png"] = foreground.at(size)
        files[f"{ANDROID_RES}/mipmap-{density}/ic_launcher_monochrome.png"] = monochrome.at(size)
    files[f"{ANDROID_RES}/mipmap-anydpi-v26/ic_launcher.xml"] = (
        b'<?xml version="1.0" encoding="utf-8"?>\n'
        b'<adaptive-icon xmlns:android="http://schemas.android.com/apk/res/android">\n'
        b'    <background android:drawable="@color/ic_launcher_background"/>\n'
        b'    <foreground android:drawable="@mipmap/ic_launcher_foreground"/>\n'
        b'    <monochrome android:drawable="@mipmap/ic_launcher_monochrome"/>\n'
        b"</adaptive-icon>\n"
    )
    files[f"{ANDROID_RES}/values/strings.xml"] = (
        '<?xml version="1.0" encoding="utf-8"?>\n<resources>\n'
        f'    <string name="app_name">{_xml_text(brand.identity.display_name)}</string>\n'
        f'    <string name="app_short_name">{_xml_text(brand.identity.short_name)}</string>\n'
        f'    <string name="url_scheme" translatable="false">{_xml_text(brand.identity.url_scheme)}</string>\n'
        "</resources>\n"
    ).encode()
    for folder, mode in (("values", "light"), ("values-night", "dark")):
        scheme = dump(getattr(release.schemes, mode))
        rows = [f'    <color name="ic_launcher_background">{brand.images.adaptive_background.upper()}</color>',
                f'    <color name="splash_background">{brand.images.splash_background.upper()}</color>']
        rows += [f'    <color name="brand_{role}">{value}</color>' for role, value in scheme.items()]
        files[f"{ANDROID_RES}/{folder}/colors.xml"] = (
            '<?xml version="1.0" encoding="utf-8"?>\n<resources>\n' + "\n".join(rows) + "\n</resources>\n"
        ).encode()
    return files


# --- iOS --------------------------------------------------------------------------------------------------


def _ios(release: ReleaseDocument, asset: Callable[[str], bytes]) -> dict[str, bytes]:
    brand = release.brand
    icon = _Png(asset(brand.images.app_icon))
    files: dict[str, bytes] = {}
    images = []
    for idiom, points, scale in IOS_ICONS:
        pixels = round(float(points) * scale)
        filename = f"Icon-App-{points}x{points}@{scale}x.png"
        files[f"{IOS_ICONSET}/{filename}"] = icon.at(pixels)
        images.append({"filename": filename, "idiom": idiom, "scale": f"{scale}x", "size": f"{points}x{points}"})
    contents = {"images": images, "info": {"author": "wallet-bff", "version": 1}}
    files[f"{IOS_ICONSET}/Contents.json"] = (json.dumps(contents, indent=2) + "\n").encode()
    identity = brand.identity
    files["ios/Flutter/Brand.xcconfig"] = (
        "// GENERATED by the Wallet BFF branding export. Include it from Debug.xcconfig and Release.xcconfig.\n"
        f"PRODUCT_BUNDLE_IDENTIFIER = {identity.ios_bundle_id}\n"
        f"BRAND_DISPLAY_NAME = {_xcconfig_value(identity.display_name)}\n"
        f"BRAND_SHORT_NAME = {_xcconfig_value(identity.short_name)}\n"
        f"BRAND_URL_SCHEME = {identity.url_scheme}\n"
        f"BRAND_ASSOCIATED_DOMAINS = {' '.join('applinks:' + d for d in identity.associated_domains)}\n"
    ).encode()
    return files


def _xcconfig_value(value: str) -> str:
    # xcconfig has no quoting; `//` starts a comment, so it is broken up.
    return value.replace("//", "/$()/")


# --- Flutter assets ---------------------------------------------------------------------------------------


def _flutter_assets(release: ReleaseDocument, asset: Callable[[str], bytes]) -> dict[str, bytes]:
    images = release.brand.images
    files: dict[str, bytes] = {}
    if images.logo:
        data = asset(images.logo)
        extension = "png" if data.startswith(b"\x89PNG") else "svg"
        files[f"flutter/assets/brand/logo.{extension}"] = data
    if images.splash_image:
        files["flutter/assets/brand/splash.png"] = asset(images.splash_image)
    for face in release.brand.typography.faces:
        data = asset(face.asset)
        extension = "otf" if data[:4] == b"OTTO" else "ttf"
        family = face.family.replace(" ", "")
        style = "Italic" if face.style == "italic" else ""
        files[f"flutter/assets/fonts/{family}-{face.weight}{style}.{extension}"] = data
    return files
