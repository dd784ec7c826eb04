"""Validation rules, one by one, each answering with a pointer to the failing field; uploads (PNG, SVG,
fonts) including hostile files."""

from __future__ import annotations

import copy
import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from branding import services
from branding.colors import contrast_ratio, scheme_from_seed
from branding.demo import app_icon_png, layer_png, sample_document, tiny_font
from branding.errors import BrandingInvalid
from branding.models import BrandingAsset
from branding.validation import check_document, check_upload, is_public_address
from tenants.models import Tenant
from tests.fixtures.branding.helpers import _branding_media  # noqa: F401 (autouse fixture)

SHA = "a" * 64
VALID = sample_document(app_key="app_validation-key-123",
                        images={"app_icon": SHA, "adaptive_foreground": SHA, "adaptive_monochrome": SHA})


def problems_of(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p.pointer, p.code) for p in check_document(document).problems}


def changed(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    *parents, last = path.strip("/").split("/")
    target = document
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    key: Any = int(last) if isinstance(target, list) else last
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return document


def test_the_sample_document_is_valid() -> None:
    assert problems_of(VALID) == set()


@pytest.mark.parametrize(("path", "value", "code"), [
    # identity
    ("/identity/ios_bundle_id", "nodots", "invalid_bundle_id"),
    ("/identity/ios_bundle_id", "com.example.my_app", "invalid_bundle_id"),  # underscores are not allowed
    ("/identity/ios_bundle_id", "com.apple.wallet", "reserved_bundle_id"),
    ("/identity/android_application_id", "com.example", None),  # two segments are fine
    ("/identity/android_application_id", "example", "invalid_application_id"),
    ("/identity/android_application_id", "com.1example.app", "invalid_application_id"),
    ("/identity/android_application_id", "com.example.new", "invalid_application_id"),  # Java keyword
    ("/identity/android_application_id", "com.example-app.x", "invalid_application_id"),
    ("/identity/url_scheme", "https", "invalid_url_scheme"),
    ("/identity/url_scheme", "My Scheme", "invalid_url_scheme"),
    ("/identity/display_name", "", "invalid_name"),
    ("/identity/display_name", "A name far too long for a home screen", "invalid_name"),
    ("/identity/short_name", "Thirteen chars", "invalid_name"),
    ("/identity/associated_domains/0", "https://example.com", "invalid_domain"),
    # links are HTTPS only; the stream is WSS
    ("/copy/locales/en/support_url", "http://example.com/help", "https_required"),
    ("/copy/locales/en/privacy_url", "javascript:alert(1)", "https_required"),
    ("/copy/locales/en/terms_url", "https://user:pw@example.com/", "https_required"),
    ("/copy/locales/en/support_email", "not-an-email", "invalid_email"),
    ("/copy/default_locale", "fr", "unknown_locale"),
    ("/runtime/api_base_url", "http://api.example.com", "https_required"),
    ("/runtime/stream_url", "ws://api.example.com/ws", "wss_required"),
    # colours
    ("/colors/seed", "blue", "invalid_color"),
    ("/colors/light/primary", "#12345", "invalid_color"),
    ("/images/adaptive_background", "#GGGGGG", "invalid_color"),
    # shape, typography, features
    ("/shape/medium", 200, "out_of_range"),
    ("/typography/weights/bold", 750, "invalid_weight"),
    ("/typography/body_family", "Bad<Family>", "invalid_family"),
    ("/features/enabled_chains/0", -1, "invalid_chain"),
    # structure
    ("/identity/ios_bundle_id", 42, "invalid_type"),
    ("/identity/ios_bundle_id", KeyError, "required"),
    ("/identity/nickname", "x", "unknown_field"),
    ("/images/app_icon", "not-a-sha", "invalid_asset"),
])
def test_each_rule_points_at_its_field(path: str, value: Any, code: str | None) -> None:
    found = problems_of(changed(path, value))
    if code is None:
        assert found == set()
    else:
        assert (path, code) in found, found


def test_contrast_is_checked_for_every_pair_in_light_and_dark_with_a_pointer_to_the_override() -> None:
    document = changed("/colors/dark/on_surface", "#303030")  # dark grey text on the dark surface
    document["colors"]["light"]["primary"] = "#B0C4FF"  # light primary under white "on primary" text

    found = check_document(document).problems

    codes = {(p.pointer, p.code) for p in found}
    assert ("/colors/dark/on_surface", "contrast_too_low") in codes
    assert ("/colors/light/primary", "contrast_too_low") in codes
    detail = next(p.detail for p in found if p.pointer == "/colors/dark/on_surface")
    assert "4.5:1" in detail and "dark" in detail


def test_ui_components_need_three_to_one() -> None:
    # a primary that passes 4.5:1 with its "on" colour but is too faint against the surface
    document = changed("/colors/light/primary", "#FAFAFA")
    document["colors"]["light"]["on_primary"] = "#000000"

    found = {(p.pointer, p.code, p.detail.split(" needs ")[1]) for p in check_document(document).problems}

    assert ("/colors/light/primary", "contrast_too_low", "3:1 for UI components.") in found


def test_wcag_contrast_and_generated_schemes() -> None:
    assert contrast_ratio("#FFFFFF", "#000000") == pytest.approx(21.0)
    assert contrast_ratio("#777777", "#FFFFFF") == pytest.approx(4.48, abs=0.01)
    light, dark = scheme_from_seed("#0B57D0", dark=False), scheme_from_seed("#0B57D0", dark=True)
    assert light["primary"] != dark["primary"]
    assert contrast_ratio(light["on_primary"], light["primary"]) >= 4.5
    assert contrast_ratio(dark["on_surface"], dark["surface"]) >= 4.5


# --- uploads --------------------------------------------------------------------------------------------


def _png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def codes(usage: str, data: bytes) -> list[str]:
    return [p.code for p in check_upload(usage, data).problems]


def test_app_icon_must_be_a_1024_png_without_alpha() -> None:
    assert codes("app_icon", app_icon_png()) == []
    assert codes("app_icon", _png("RGBA", (1024, 1024))) == ["alpha_not_allowed"]
    assert codes("app_icon", _png("RGB", (512, 512))) == ["invalid_dimensions"]
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024)).save(buffer, format="JPEG")
    assert codes("app_icon", buffer.getvalue()) == ["invalid_format"]


def test_adaptive_layers_must_be_square_with_alpha() -> None:
    assert codes("adaptive_foreground", layer_png()) == []
    assert codes("adaptive_monochrome", _png("RGB", (432, 432))) == ["alpha_required"]
    assert codes("adaptive_foreground", _png("RGBA", (432, 500))) == ["invalid_dimensions"]
    assert codes("adaptive_foreground", _png("RGBA", (100, 100))) == ["invalid_dimensions"]


def test_corrupt_truncated_and_bomb_pngs_are_refused() -> None:
    good = app_icon_png()
    assert codes("app_icon", good[: len(good) // 2]) == ["invalid_image"]
    assert codes("app_icon", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10) == ["invalid_image"]
    # a decompression bomb: a 30000x30000 header (compressed, it is tiny)
    raw = zlib.compress(b"\x00" * 1000)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    assert codes("app_icon", bomb) == ["image_too_large"]


def test_upload_size_limits(settings: Any) -> None:
    settings.BRANDING_MAX_IMAGE_BYTES = 1000
    assert codes("app_icon", app_icon_png()) == ["file_too_large"]
    settings.BRANDING_MAX_SVG_BYTES = 100
    assert codes("logo", b'<svg xmlns="http://www.w3.org/2000/svg">' + b" " * 200 + b"</svg>") == ["file_too_large"]


SVG_ATTACKS = {
    "script": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "svg_script"),
    "namespaced script": (b'<s:svg xmlns:s="http://www.w3.org/2000/svg"><s:script>alert(1)</s:script></s:svg>',
                          "svg_script"),
    "event handler": (b'<svg xmlns="http://www.w3.org/2000/svg"><rect onload="alert(1)"/></svg>', "svg_event_handler"),
    "handler on root": (b'<svg xmlns="http://www.w3.org/2000/svg" onclick="x()"></svg>', "svg_event_handler"),
    "external href": (b'<svg xmlns="http://www.w3.org/2000/svg"><image href="https://evil.example/x.png"/></svg>',
                      "svg_external_reference"),
    "xlink data uri": (b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
                       b'<image xlink:href="data:image/svg+xml;base64,PHN2Zz4="/></svg>', "svg_external_reference"),
    "javascript link": (b'<svg xmlns="http://www.w3.org/2000/svg"><a href="javascript:alert(1)"><rect/></a></svg>',
                        "svg_external_reference"),
    "css url": (b'<svg xmlns="http://www.w3.org/2000/svg"><rect style="fill:url(https://evil.example/t)"/></svg>',
                "svg_external_reference"),
    "style import": (b'<svg xmlns="http://www.w3.org/2000/svg"><style>@import "https://evil.example/a.css";</style>'
                     b'</svg>', "svg_external_reference"),
    "foreignObject": (b'<svg xmlns="http://www.w3.org/2000/svg"><foreignObject><div xmlns="http://www.w3.org/1999/'
                      b'xhtml">x</div></foreignObject></svg>', "svg_forbidden_element"),
    "xxe": (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b'<svg xmlns="http://www.w3.org/2000/svg"><text>&xxe;</text></svg>', "svg_dtd_not_allowed"),
    "billion laughs": (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
                       b'<svg xmlns="http://www.w3.org/2000/svg">&lol2;</svg>', "svg_dtd_not_allowed"),
    "stylesheet pi": (b'<?xml-stylesheet href="https://evil.example/s.css"?><svg xmlns="http://www.w3.org/2000/svg"/>',
                      "svg_external_reference"),
    "not svg": (b'<html xmlns="http://www.w3.org/1999/xhtml"><svg/></html>', "invalid_svg"),
    "broken xml": (b"<svg xmlns='http://www.w3.org/2000/svg'><rect></svg>", "invalid_svg"),
}


@pytest.mark.parametrize("name", sorted(SVG_ATTACKS))
def test_hostile_svgs_are_refused(name: str) -> None:
    data, code = SVG_ATTACKS[name]
    assert code in codes("logo", data)


def test_a_clean_svg_with_internal_references_is_accepted() -> None:
    from branding.demo import LOGO_SVG

    assert codes("logo", LOGO_SVG) == []
    assert codes("app_icon", LOGO_SVG) == ["invalid_format"]  # SVG is for the logo only


def test_fonts_are_checked_with_fonttools() -> None:
    assert codes("font", tiny_font()) == []
    assert codes("font", b"wOFF" + b"\x00" * 100) == ["invalid_font"]  # WOFF is not TTF/OTF
    assert codes("font", b"\x00\x01\x00\x00" + b"\x00" * 100) == ["invalid_font"]  # a TTF header, no tables
    assert codes("font", app_icon_png()) == ["invalid_font"]


def test_upload_service_stores_content_addressed_and_refuses_with_a_pointer(tenant_a: Tenant) -> None:
    data = app_icon_png()
    first = services.branding_asset_upload(tenant=tenant_a, usage="app_icon", data=data, filename="icon.png")
    again = services.branding_asset_upload(tenant=tenant_a, usage="app_icon", data=data)
    assert first.pk == again.pk
    assert first.file.name.endswith(f"{first.sha256}.png") and first.sha256 in first.file.name
    assert (first.width, first.height, first.media_type) == (1024, 1024, "image/png")

    with pytest.raises(BrandingInvalid) as caught:
        services.branding_asset_upload(tenant=tenant_a, usage="logo", data=SVG_ATTACKS["script"][0])
    assert caught.value.extra["errors"] == [{"pointer": "/file", "code": "svg_script",
                                             "detail": "<script> elements are not allowed in an SVG logo."}]
    assert BrandingAsset.all_tenants.filter(tenant=tenant_a).count() == 1


def test_publish_checks_that_referenced_uploads_exist_fit_their_use_and_belong_to_the_tenant(
        tenant_a: Tenant, tenant_b: Tenant) -> None:
    icon_b = services.branding_asset_upload(tenant=tenant_b, usage="app_icon", data=app_icon_png())
    layer = services.branding_asset_upload(tenant=tenant_a, usage="adaptive_foreground", data=layer_png())
    document = sample_document(app_key="app_validation-key-123", images={
        "app_icon": icon_b.sha256,  # tenant B's upload
        "adaptive_foreground": layer.sha256,
        "adaptive_monochrome": layer.sha256,
    })
    document["images"]["splash_image"] = layer.sha256
    document["images"]["logo"] = layer.sha256
    services.branding_draft_update(tenant=tenant_a, content=document)

    problems = {(p.pointer, p.code) for p in services.branding_draft_check(tenant=tenant_a)}

    assert ("/images/app_icon", "asset_not_found") in problems
    assert not any(pointer.startswith("/images/adaptive") for pointer, _ in problems)


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False), ("fe80::1", False),
    ("fd00:ec2::254", False), ("::ffff:127.0.0.1", False), ("64:ff9b::a9fe:a9fe", False),
    ("2606:4700:4700::1111", True), ("224.0.0.1", False),
])
def test_public_address_check(address: str, public: bool) -> None:
    import ipaddress

    assert is_public_address(ipaddress.ip_address(address)) is public
