"""ASGI entry point: websockets (the stream) and, in the embedded default, HTTP too."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet.settings.development")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from tenants.channels import TenantAuthMiddleware  # noqa: E402
from wallet.events.consumers import StreamConsumer  # noqa: E402

websocket_urlpatterns = [
    path("ws/v1/stream", StreamConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": TenantAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
