"""The export bundle: complete, reproducible to the byte, matching a committed expected manifest; its
tokens feed a real Style Dictionary build and its Dart parses."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from django.core.management import call_command
from PIL import Image

from branding.bundle import ADAPTIVE_SIZES, IOS_ICONS, LAUNCHER_SIZES
from branding.export import release_bundle_files
from branding.schemas import committed_schema
from branding.selectors import release_current
from tenants.models import Tenant
from tests.factories import TenantFactory
from tests.fixtures.branding.helpers import (  # noqa: F401 (autouse fixture)
    FIXTURES,
    GOLDEN_APP_KEY,
    _branding_media,
    publish_sample,
)

EXPECTED_MANIFEST = FIXTURES / "expected_manifest.json"
RES = "android/app/src/main/res"
ICONSET = "ios/Runner/Assets.xcassets/AppIcon.appiconset"


@pytest.fixture
def golden(db: Any) -> Tenant:
    """The fixture tenant of the golden test: fixed slug, name and app key."""
    tenant = TenantFactory(slug="golden", name="Golden Wallet")
    publish_sample(tenant, app_key=GOLDEN_APP_KEY)
    return tenant


def _export_zip(tenant: Tenant, path: Path) -> bytes:
    call_command("export_branding", tenant.slug, "--zip", str(path), stdout=io.StringIO())
    return path.read_bytes()


def test_export_twice_gives_identical_bytes_and_the_committed_manifest(golden: Tenant, tmp_path: Path) -> None:
    # when the fixture tenant's release is exported twice, as a zip and as a directory
    first = _export_zip(golden, tmp_path / "one.zip")
    second = _export_zip(golden, tmp_path / "two.zip")
    call_command("export_branding", golden.slug, "--release", "1", "--out", str(tmp_path / "dir"),
                 stdout=io.StringIO())

    # then the zips are byte-identical, with fixed timestamps and permissions, in sorted order
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.external_attr >> 16 for i in infos} == {0o100644}
        manifest = json.loads(archive.read("manifest.json"))
        # and every file matches its manifest hash, in the zip and in the directory
        for entry in manifest["files"]:
            data = archive.read(entry["path"])
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert (tmp_path / "dir" / entry["path"]).read_bytes() == data
    assert sorted(e["path"] for e in manifest["files"]) == sorted(set(names) - {"manifest.json"})
    # and the manifest equals the committed one (regenerate with BRANDING_UPDATE_GOLDEN=1 when intended)
    if os.environ.get("BRANDING_UPDATE_GOLDEN"):
        EXPECTED_MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert manifest == json.loads(EXPECTED_MANIFEST.read_text())


def test_bundle_holds_every_platform_file(golden: Tenant) -> None:
    files = release_bundle_files(tenant=golden, release=release_current(tenant=golden))

    for density, size in LAUNCHER_SIZES.items():
        assert Image.open(io.BytesIO(files[f"{RES}/mipmap-{density}/ic_launcher.png"])).size == (size, size)
    for density, size in ADAPTIVE_SIZES.items():
        for layer in ("foreground", "monochrome"):
            image = Image.open(io.BytesIO(files[f"{RES}/mipmap-{density}/ic_launcher_{layer}.png"]))
            assert image.size == (size, size) and image.mode == "RGBA"
    adaptive = files[f"{RES}/mipmap-anydpi-v26/ic_launcher.xml"].decode()
    assert "@mipmap/ic_launcher_foreground" in adaptive and "@mipmap/ic_launcher_monochrome" in adaptive
    assert '<string name="app_name">Golden Wallet</string>' in files[f"{RES}/values/strings.xml"].decode()
    assert "ic_launcher_background" in files[f"{RES}/values/colors.xml"].decode()
    assert f"{RES}/values-night/colors.xml" in files
    contents = json.loads(files[f"{ICONSET}/Contents.json"])
    assert len(contents["images"]) == len(IOS_ICONS)
    for image in contents["images"]:
        points = float(image["size"].split("x")[0])
        pixels = round(points * int(image["scale"][:-1]))
        png = Image.open(io.BytesIO(files[f"{ICONSET}/{image['filename']}"]))
        assert png.size == (pixels, pixels) and png.mode == "RGB"  # no alpha on iOS icons
    xcconfig = files["ios/Flutter/Brand.xcconfig"].decode()
    assert "PRODUCT_BUNDLE_IDENTIFIER = com.example.golden\n" in xcconfig
    assert "BRAND_DISPLAY_NAME = Golden Wallet\n" in xcconfig
    runtime = json.loads(files["config/runtime.json"])
    assert runtime["app_key"] == GOLDEN_APP_KEY and runtime["release"] == 1
    assert files["flutter/assets/brand/logo.svg"].startswith(b"<svg")
    assert "flutter/assets/fonts/BrandSans-400.ttf" in files


def test_manifest_and_tokens_validate_against_the_committed_schemas(golden: Tenant) -> None:
    files = release_bundle_files(tenant=golden, release=release_current(tenant=golden))

    jsonschema.validate(json.loads(files["manifest.json"]), committed_schema("manifest.schema.json"))
    jsonschema.validate(json.loads(files["tokens/brand.tokens.json"]), committed_schema("tokens.schema.json"))
    jsonschema.validate(release_current(tenant=golden).content, committed_schema("release.schema.json"))
    # and a manifest that breaks the contract is refused (the check can fail)
    broken = json.loads(files["manifest.json"])
    broken["files"][0]["sha256"] = "not-a-hash"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, committed_schema("manifest.schema.json"))


def test_committed_schemas_equal_the_ones_generated_from_the_typed_models() -> None:
    from branding.schemas import SCHEMA_DIR, generated_schemas, render

    for name, schema in generated_schemas().items():
        assert (SCHEMA_DIR / name).read_text() == render(schema), f"{name} is stale: manage.py branding_schemas --write"


# --- real consumers -----------------------------------------------------------------------------------------


def _dart_errors(source: bytes) -> list[str]:
    from tree_sitter_language_pack import get_parser

    tree = get_parser("dart").parse(source)
    errors = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            errors.append(f"{node.type} at {node.start_point}: {source[node.start_byte:node.end_byte][:60]!r}")
        stack.extend(node.children)
    return errors


def test_generated_dart_parses_without_errors(golden: Tenant) -> None:
    source = release_bundle_files(tenant=golden, release=release_current(tenant=golden))[
        "flutter/lib/brand/brand.g.dart"]

    assert _dart_errors(source) == []
    text = source.decode()
    assert "static const ColorScheme light = ColorScheme(" in text
    assert "static const ColorScheme dark = ColorScheme(" in text
    assert "static const TextTheme textTheme = TextTheme(" in text


def test_the_dart_check_fails_on_broken_dart(golden: Tenant) -> None:
    # negative control: the same file with a missing closing parenthesis and a stray token
    source = release_bundle_files(tenant=golden, release=release_current(tenant=golden))[
        "flutter/lib/brand/brand.g.dart"]
    broken = source.replace(b"  );\n", b"  ;\n", 1).replace(b"abstract final class BrandShape {",
                                                           b"abstract final class BrandShape { ===")

    assert _dart_errors(broken) != []


def test_dart_strings_are_escaped(tenant_a: Tenant) -> None:
    from branding.bundle import dart_string

    assert dart_string("it's $money\\ \n") == "'it\\'s \\$money\\\\ \\n'"
    assert _dart_errors(f"const String s = {dart_string(chr(39) + '$x' + chr(92))};".encode()) == []


STYLE_DICTIONARY_CONFIG = FIXTURES / "style-dictionary.config.mjs"


def test_style_dictionary_builds_flutter_output_from_the_tokens(golden: Tenant, tmp_path: Path) -> None:
    tools = os.environ.get("NODE_TOOLS_BIN")
    if not tools:
        pytest.skip("NODE_TOOLS_BIN is unset (make test-quick); `make test` installs style-dictionary and runs this")
    binary = Path(tools) / "style-dictionary"
    assert binary.exists(), f"{binary} is missing: .ci/services install should have installed it"
    files = release_bundle_files(tenant=golden, release=release_current(tenant=golden))
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "brand.tokens.json").write_bytes(files["tokens/brand.tokens.json"])
    shutil.copy(STYLE_DICTIONARY_CONFIG, tmp_path / "config.mjs")

    completed = subprocess.run([str(binary), "build", "--config", "config.mjs"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120, check=False)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "error" not in (completed.stdout + completed.stderr).lower()
    dart = (tmp_path / "build" / "flutter" / "brand_tokens.dart").read_text()
    light_primary = json.loads(files["tokens/brand.tokens.json"])["color"]["light"]["primary"]["$value"]
    assert f"Color(0xFF{light_primary[1:].upper()})" in dart
    assert "colorLightOnPrimary" in dart
    assert "static const radiusMedium = 12.00;" in dart
    assert 'static const fontBody = "Brand Sans";' in dart
    assert _dart_errors(dart.encode()) == []


def test_export_command_refuses_unknown_tenants_and_releases(golden: Tenant, tmp_path: Path) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no tenant"):
        call_command("export_branding", "nobody", "--zip", str(tmp_path / "x.zip"), stdout=io.StringIO())
    with pytest.raises(CommandError, match="no such release"):
        call_command("export_branding", golden.slug, "--release", "7", "--zip", str(tmp_path / "x.zip"),
                     stdout=io.StringIO())
    assert not (tmp_path / "x.zip").exists()
