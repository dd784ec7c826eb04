"""Settings of the branding app, read from Django settings with defaults from the environment."""

from __future__ import annotations

import os

from django.conf import settings


def _int(name: str, default: int) -> int:
    value = getattr(settings, name, None)
    if value is None:
        raw = os.environ.get(name, "")
        return int(raw) if raw else default
    return int(value)


def _list(name: str) -> list[str]:
    value = getattr(settings, name, None)
    if value is None:
        return [item.strip().lower() for item in os.environ.get(name, "").split(",") if item.strip()]
    return [str(item).lower() for item in value]


def max_image_bytes() -> int:
    """BRANDING_MAX_IMAGE_BYTES: largest PNG upload (default 2 MiB)."""
    return _int("BRANDING_MAX_IMAGE_BYTES", 2 * 1024 * 1024)


def max_svg_bytes() -> int:
    """BRANDING_MAX_SVG_BYTES: largest SVG upload (default 256 KiB)."""
    return _int("BRANDING_MAX_SVG_BYTES", 256 * 1024)


def max_font_bytes() -> int:
    """BRANDING_MAX_FONT_BYTES: largest TTF/OTF upload (default 4 MiB)."""
    return _int("BRANDING_MAX_FONT_BYTES", 4 * 1024 * 1024)


def runtime_cache_seconds() -> int:
    """BRANDING_RUNTIME_CACHE_SECONDS: how long a process trusts its cached current release (default 5)."""
    return _int("BRANDING_RUNTIME_CACHE_SECONDS", 5)


def hook_allow_hosts() -> list[str]:
    """BRANDING_HOOK_ALLOW_HOSTS: host names or IPs a build hook may reach even when they resolve to
    loopback or private addresses (tests, on-premises CI). Empty by default."""
    return _list("BRANDING_HOOK_ALLOW_HOSTS")


def hook_timeout_seconds() -> float:
    """BRANDING_HOOK_TIMEOUT_SECONDS: connect/read timeout of a build-hook POST (default 10)."""
    return float(getattr(settings, "BRANDING_HOOK_TIMEOUT_SECONDS", os.environ.get("BRANDING_HOOK_TIMEOUT_SECONDS")
                         or 10))


def hook_max_retries() -> int:
    """BRANDING_HOOK_MAX_RETRIES: retries of a failed build-hook delivery, with exponential backoff (5)."""
    return _int("BRANDING_HOOK_MAX_RETRIES", 5)
