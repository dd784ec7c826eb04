"""Production settings pass `check --deploy` with no warnings; they refuse unsafe configurations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "wallet.settings.production",
    "SECRET_KEY": "k3y-" + "q8Zr!x9#Lw2@Tn5$Vb7%Hs4^Jd6&Mf1*Pg0(Ua3)Yc" * 2,
    "ALLOWED_HOSTS": "api.wallet.example",
    "DATABASE_URL": "postgres://wallet@db.invalid:5432/wallet",
    "REDIS_URL": "redis://redis.invalid:6379/0",
}


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV and k != "DEBUG"}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_with_no_warnings() -> None:
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    # Silenced: only the admin's middleware checks and the CSRF deploy check, which look in MIDDLEWARE for what
    # BROWSER_MIDDLEWARE holds; wallet/core/checks.py checks it instead (tests/test_browser_middleware.py).
    assert "System check identified no issues (4 silenced)." in result.stdout
    from django.conf import settings
    assert settings.SILENCED_SYSTEM_CHECKS == ["admin.E408", "admin.E409", "admin.E410", "security.W003"]


def test_production_refuses_a_missing_secret_key() -> None:
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_debug() -> None:
    result = _manage("check", env={**PRODUCTION_ENV, "DEBUG": "1"})
    assert result.returncode != 0
    assert "refuse DEBUG" in result.stderr


def test_production_refuses_missing_hosts_and_database() -> None:
    for missing in ("ALLOWED_HOSTS", "DATABASE_URL"):
        env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}
        result = _manage("check", env=env)
        assert result.returncode != 0
        assert missing in result.stderr


def test_development_defaults_are_embedded(settings) -> None:
    # With no REDIS_URL the cache, channel layer and tasks stay in process.
    if not os.environ.get("REDIS_URL"):
        assert settings.CACHES["default"]["BACKEND"].endswith("LocMemCache")
        assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
        assert settings.CELERY_TASK_ALWAYS_EAGER is True
    else:
        assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
        assert settings.CELERY_BROKER_URL == os.environ["REDIS_URL"]
