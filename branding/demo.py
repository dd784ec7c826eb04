"""Deterministic sample branding (images drawn with Pillow, a tiny font built with fontTools) for the demo
tenant, the golden test and the benchmark."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw

from tenants.models import Tenant, User

LOGO_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" width="64" height="64">'
            b'<defs><linearGradient id="g"><stop offset="0" stop-color="#0B57D0"/>'
            b'<stop offset="1" stop-color="#00639B"/></linearGradient></defs>'
            b'<circle cx="32" cy="32" r="30" fill="url(#g)"/><use href="#g"/></svg>')


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def app_icon_png(color: tuple[int, int, int] = (11, 87, 208), size: int = 1024) -> bytes:
    """An opaque square icon: a coloured field with a white ring."""
    image = Image.new("RGB", (size, size), color)
    draw = ImageDraw.Draw(image)
    margin = size // 5
    draw.ellipse((margin, margin, size - margin, size - margin), outline=(255, 255, 255), width=size // 12)
    return png_bytes(image)


def layer_png(size: int = 432, color: tuple[int, int, int, int] = (255, 255, 255, 255)) -> bytes:
    """A transparent adaptive-icon layer with a shape inside the 66 dp safe zone."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    inner = size * 2 // 7
    draw.ellipse((inner, inner, size - inner, size - inner), fill=color)
    return png_bytes(image)


def tiny_font(family: str = "Brand Sans") -> bytes:
    """A minimal valid TrueType font (two glyphs) built with fontTools."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    def box() -> Any:
        pen = TTGlyphPen(None)
        pen.moveTo((100, 0))
        pen.lineTo((100, 700))
        pen.lineTo((500, 700))
        pen.lineTo((500, 0))
        pen.closePath()
        return pen.glyph()

    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder([".notdef", "A"])
    builder.setupCharacterMap({ord("A"): "A"})
    builder.setupGlyf({".notdef": box(), "A": box()})
    builder.setupHorizontalMetrics({".notdef": (600, 100), "A": (600, 100)})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": family, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=800, usWinAscent=800, usWinDescent=200)
    builder.setupPost()
    builder.setupHead(unitsPerEm=1000, created=0, modified=0)
    buffer = io.BytesIO()
    builder.save(buffer)
    return buffer.getvalue()


def sample_document(*, app_key: str, images: dict[str, str], slug: str = "demo", name: str = "Demo Wallet",
                    faces: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A complete, valid branding document; `images` maps usage to an uploaded SHA-256."""
    return {
        "identity": {
            "display_name": name, "short_name": name[:12], "ios_bundle_id": f"com.example.{slug.replace('-', '')}",
            "android_application_id": f"com.example.{slug.replace('-', '_')}", "url_scheme": f"{slug}wallet",
            "associated_domains": [f"{slug}.example.com"],
        },
        "colors": {"seed": "#0B57D0", "light": {}, "dark": {}},
        "typography": {"display_family": "Brand Sans", "body_family": "Brand Sans", "faces": faces or []},
        "shape": {"extra_small": 4, "small": 8, "medium": 12, "large": 16, "extra_large": 28},
        "images": {
            "app_icon": images["app_icon"], "adaptive_foreground": images["adaptive_foreground"],
            "adaptive_monochrome": images["adaptive_monochrome"], "adaptive_background": "#0B57D0",
            "splash_background": "#FFFFFF", "logo": images.get("logo"), "splash_image": None,
        },
        "copy": {"default_locale": "en", "locales": {
            "en": {"support_email": f"support@{slug}.example.com", "support_url": f"https://{slug}.example.com/help",
                   "terms_url": f"https://{slug}.example.com/terms", "privacy_url": f"https://{slug}.example.com/privacy",
                   "about": f"{name}: your money, your keys."},
        }},
        "features": {"enabled_assets": ["USD", "EUR", "ETH:31337"], "enabled_chains": [31337], "fiat_enabled": True,
                     "flags": {"swap": False, "cards": True}},
        "runtime": {"api_base_url": f"https://api.{slug}.example.com/api/v1",
                    "stream_url": f"wss://api.{slug}.example.com/ws/v1/stream", "app_key": app_key},
    }


def seed_sample_branding(*, tenant: Tenant, app_key: str, actor: User | None = None, name: str | None = None,
                         with_font: bool = True, publish: bool = True) -> dict[str, Any]:
    """Upload the sample images (and font), write the draft and publish release 1 if the tenant has no
    release yet. Idempotent. Returns the draft document."""
    from branding import services
    from branding.selectors import release_list

    uploads = {
        "app_icon": services.branding_asset_upload(tenant=tenant, usage="app_icon", data=app_icon_png()),
        "adaptive_foreground": services.branding_asset_upload(tenant=tenant, usage="adaptive_foreground",
                                                              data=layer_png()),
        "adaptive_monochrome": services.branding_asset_upload(tenant=tenant, usage="adaptive_monochrome",
                                                              data=layer_png(color=(0, 0, 0, 255))),
        "logo": services.branding_asset_upload(tenant=tenant, usage="logo", data=LOGO_SVG, filename="logo.svg"),
    }
    faces = []
    if with_font:
        font = services.branding_asset_upload(tenant=tenant, usage="font", data=tiny_font(), filename="brand.ttf")
        faces.append({"family": "Brand Sans", "weight": 400, "style": "normal", "asset": font.sha256})
    document = sample_document(app_key=app_key, images={k: v.sha256 for k, v in uploads.items()}, slug=tenant.slug,
                               name=name or tenant.name[:30], faces=faces)
    services.branding_draft_update(tenant=tenant, content=document, actor=actor)
    if publish and not release_list(tenant=tenant).exists():
        services.branding_release_publish(tenant=tenant, actor=actor, actor_repr="seed")
    return document
