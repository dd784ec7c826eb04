"""The release hook: a Standard Webhooks POST sent after commit by an idempotent task, retried with
backoff, never followed through redirects, and refused at connect time for private destinations. A
real local HTTP server receives it (reachable only through the explicit allow-list setting)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from branding import services
from branding.errors import BrandingInvalid
from branding.hook import HookAddressRefused, vetted_addresses
from branding.models import BuildHook, HookDelivery
from branding.tasks import deliver_release_hook
from tenants.models import Tenant
from tests.conftest import celery_eager
from tests.fixtures.branding.helpers import _branding_media, publish_sample  # noqa: F401 (autouse fixture)
from wallet.celery import app as celery_app


class Receiver:
    """A local HTTP server that records requests and answers with the queued statuses (then 200)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _eager_tasks() -> Iterator[None]:
    with celery_eager(True):
        yield


@pytest.fixture
def allow_local(settings: Any) -> None:
    settings.BRANDING_HOOK_ALLOW_HOSTS = ["127.0.0.1", "hooks.example.test"]


def _publish_with_hook(tenant: Tenant, url: str, capture: Any, *, execute: bool = True) -> BuildHook:
    hook = services.build_hook_set(tenant=tenant, url=url)
    with capture(execute=execute):
        publish_sample(tenant)
    return hook


def test_publish_posts_a_signed_hook_after_commit(tenant_a: Tenant, receiver: Receiver, allow_local: None,
                                                  django_capture_on_commit_callbacks: Any) -> None:
    # given a hook; when a release is published but the transaction's callbacks have not run
    hook = services.build_hook_set(tenant=tenant_a, url=f"http://127.0.0.1:{receiver.port}/hook")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        publish_sample(tenant_a)
    # then nothing was sent inside the transaction
    assert receiver.requests == []
    delivery = HookDelivery.all_tenants.get(tenant=tenant_a)
    assert delivery.status == HookDelivery.Status.PENDING

    # when the commit callbacks run
    for callback in callbacks:
        callback()

    # then one POST arrived, signed per Standard Webhooks with the hook's secret
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    payload = Webhook(hook.secret).verify(request["body"], request["headers"])
    assert payload["type"] == "branding.released"
    assert payload["data"]["release"] == 1 and payload["data"]["tenant"] == "tenant-a"
    assert request["headers"]["webhook-id"].startswith("msg_brel_")
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(request["body"], request["headers"])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 1, 200)


def test_the_task_is_idempotent(tenant_a: Tenant, receiver: Receiver, allow_local: None,
                                django_capture_on_commit_callbacks: Any) -> None:
    _publish_with_hook(tenant_a, f"http://127.0.0.1:{receiver.port}/hook", django_capture_on_commit_callbacks)
    delivery = HookDelivery.all_tenants.get(tenant=tenant_a)

    again = deliver_release_hook.apply(kwargs={"tenant_id": str(tenant_a.pk), "delivery_id": str(delivery.pk)})

    assert again.get() == "skipped"
    assert len(receiver.requests) == 1


def test_5xx_is_retried_with_backoff_until_delivered(tenant_a: Tenant, receiver: Receiver, allow_local: None,
                                                     django_capture_on_commit_callbacks: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    countdowns: list[int] = []
    original = deliver_release_hook.retry

    def spy(*args: Any, **kwargs: Any) -> Any:
        countdowns.append(kwargs["countdown"])
        return original(*args, **kwargs)

    monkeypatch.setattr(deliver_release_hook, "retry", spy)
    receiver.statuses = [503, 502]
    # eager tasks re-run a retry at once only when errors do not propagate (as in a worker)
    propagates = celery_app.conf.task_eager_propagates
    celery_app.conf.task_eager_propagates = False
    try:
        _publish_with_hook(tenant_a, f"http://127.0.0.1:{receiver.port}/hook", django_capture_on_commit_callbacks)
    finally:
        celery_app.conf.task_eager_propagates = propagates

    delivery = HookDelivery.all_tenants.get(tenant=tenant_a)
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert len(receiver.requests) == 3
    assert countdowns == [5, 10]  # exponential backoff
    ids = {r["headers"]["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1  # the same message id on every attempt, so the receiver can deduplicate


def test_4xx_fails_without_retry(tenant_a: Tenant, receiver: Receiver, allow_local: None,
                                 django_capture_on_commit_callbacks: Any) -> None:
    receiver.statuses = [400]

    _publish_with_hook(tenant_a, f"http://127.0.0.1:{receiver.port}/hook", django_capture_on_commit_callbacks)

    delivery = HookDelivery.all_tenants.get(tenant=tenant_a)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("failed", 1, "HTTP 400")
    assert len(receiver.requests) == 1


def test_redirects_are_not_followed(tenant_a: Tenant, receiver: Receiver, allow_local: None,
                                    django_capture_on_commit_callbacks: Any) -> None:
    receiver.statuses = [302]

    _publish_with_hook(tenant_a, f"http://127.0.0.1:{receiver.port}/hook", django_capture_on_commit_callbacks)

    assert [r["path"] for r in receiver.requests] == ["/hook"]
    delivery = HookDelivery.all_tenants.get(tenant=tenant_a)
    assert delivery.status == "failed" and "redirects are not followed" in delivery.last_error


def test_a_name_resolving_to_loopback_is_refused_at_connect_time(tenant_a: Tenant, receiver: Receiver,
                                                                 django_capture_on_commit_callbacks: Any) -> None:
    # given a hook URL that passes the save-time check (a name, https) but resolves to loopback
    _publish_with_hook(tenant_a, f"https://localhost:{receiver.port}/hook", django_capture_on_commit_callbacks)

    # then the delivery never connected, and failed without retrying
    assert receiver.requests == []
    delivery = HookDelivery.all_tenants.get(tenant=tenant_a)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert "not resolve to a public address" in delivery.last_error
    assert "127.0.0.1" not in delivery.last_error and "::1" not in delivery.last_error


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # a name that resolves to a public address and to the metadata service (DNS rebinding) is refused
    def resolve(host: str, port: int, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(HookAddressRefused):
        vetted_addresses("rebind.example.com", 443)
    assert vetted_addresses("rebind.example.com", 443, allow=True) == ["93.184.216.34", "169.254.169.254"]


def test_the_connection_goes_to_the_vetted_ip_with_the_name_as_host(tenant_a: Tenant, receiver: Receiver,
                                                                     allow_local: None, monkeypatch: pytest.MonkeyPatch,
                                                                     django_capture_on_commit_callbacks: Any) -> None:
    # given a name (allow-listed) that our resolver maps to the local receiver
    real = socket.getaddrinfo

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "hooks.example.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)

    _publish_with_hook(tenant_a, f"http://hooks.example.test:{receiver.port}/hook", django_capture_on_commit_callbacks)

    assert len(receiver.requests) == 1
    assert receiver.requests[0]["headers"]["Host"] == f"hooks.example.test:{receiver.port}"


@pytest.mark.parametrize(("url", "code"), [
    ("http://builds.example.com/hook", "https_required"),
    ("https://10.0.0.5/hook", "address_not_allowed"),
    ("https://169.254.169.254/latest/meta-data", "address_not_allowed"),
    ("https://[::1]/hook", "address_not_allowed"),
    ("https://user:pw@builds.example.com/hook", "invalid_url"),
])
def test_hook_urls_are_checked_when_saved(tenant_a: Tenant, url: str, code: str) -> None:
    with pytest.raises(BrandingInvalid) as caught:
        services.build_hook_set(tenant=tenant_a, url=url)
    assert [p.code for p in caught.value.problems] == [code]
    assert not BuildHook.all_tenants.filter(tenant=tenant_a).exists()


def test_hook_secret_is_a_standard_webhooks_secret(tenant_a: Tenant) -> None:
    hook = services.build_hook_set(tenant=tenant_a, url="https://builds.example.com/hook")
    assert hook.secret.startswith("whsec_")
    Webhook(hook.secret)  # parses
    assert json.dumps({"secret": hook.secret})  # stored as text


def test_a_stale_pending_delivery_is_redelivered_by_the_sweep(tenant_a: Tenant, receiver: Receiver,
                                                              allow_local: None,
                                                              django_capture_on_commit_callbacks: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from branding.tasks import redeliver_pending_hooks

    # given a delivery whose task was lost (the commit callbacks never ran), an hour and more ago
    _publish_with_hook(tenant_a, f"http://127.0.0.1:{receiver.port}/hook", django_capture_on_commit_callbacks,
                       execute=False)
    HookDelivery.all_tenants.filter(tenant=tenant_a).update(created_at=timezone.now() - timedelta(hours=2))

    # when the sweep runs (twice)
    assert redeliver_pending_hooks.apply().get() == 1
    assert redeliver_pending_hooks.apply().get() == 0

    # then it was delivered once
    assert len(receiver.requests) == 1
    assert HookDelivery.all_tenants.get(tenant=tenant_a).status == "delivered"
