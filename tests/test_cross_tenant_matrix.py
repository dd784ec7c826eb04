"""Cross-tenant matrix over every API route, discovered from the URL conf.

Every route under /api/v1/ is found by walking the resolver, so a new endpoint cannot slip past: the first
test fails until the route is either described in `REGISTRY` (one line) or listed in `EXEMPT` with a reason.

For each registered route, callers of tenant B (a plain user and the owner, each with tenant B's app key and
their own token) exercise it against tenant A's data:
- routes with an object id answer 404 `not_found` for tenant A's object, on every method;
- read routes without an id never return any of tenant A's ids, emails, keys or tokens;
- action routes (sign-in, logout, password change) answer as declared and leak nothing of tenant A;
and in every case no row of tenant A changes. Independently of the registry, a token of tenant A presented
with tenant B's app key gets 401 `token_tenant_mismatch` on every route whose view authenticates.

The matrix also tests itself against probe endpoints (one scoped, one leaking) mounted with
`pytest.mark.urls`, so that it is known to fail on a real leak.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.apps import apps
from django.db import models
from django.http import HttpResponse
from django.urls import URLPattern, URLResolver, get_resolver, include, path, reverse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import services
from tenants.models import AppKey, Membership, Tenant, User
from tenants.scoping import access_by_id
from tests.conftest import AppClient, app_key_of, make_staff
from tests.factories import DEFAULT_PASSWORD, TenantFactory, UserFactory
from tests.ledger_helpers import account, enable, fund
from wallet.ledger import services as ledger_services

API_PREFIX = "api/v1/"
STAFF_PASSWORD = "staff-password-123"  # what `make_staff` gives every staff member
SKIPPED_METHODS = frozenset({"OPTIONS", "HEAD"})  # preflight/metadata: never reach an object or a tenant


# --- discovery ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One URL pattern under /api/v1/."""

    name: str  # "namespace:name", or the path pattern itself when the route has no name
    path: str  # the full pattern, e.g. "api/v1/transfers/<uuid:transfer_id>"
    kwargs: tuple[str, ...]  # names of the URL arguments (converters or regex groups), outermost first
    callback: Callable[..., HttpResponse] = field(compare=False)
    reversible: bool = True

    @property
    def view_class(self) -> type | None:
        return getattr(self.callback, "cls", None) or getattr(self.callback, "view_class", None)

    @property
    def methods(self) -> tuple[str, ...]:
        """The HTTP methods the view implements (a viewset's action map, or the handler methods)."""
        actions = getattr(self.callback, "actions", None)
        if actions:
            found = [m.upper() for m in actions]
        elif self.view_class is not None:
            found = [m.upper() for m in self.view_class.http_method_names if hasattr(self.view_class, m)]
        else:  # a function view: assume the common verbs; register explicit methods for it instead
            found = ["GET", "POST"]
        return tuple(m for m in found if m not in SKIPPED_METHODS)

    @property
    def authenticates(self) -> bool:
        """True when the view runs bearer authentication (DRF views with authentication classes)."""
        return bool(getattr(self.view_class, "authentication_classes", None))

    def url(self, **kwargs: Any) -> str:
        assert set(kwargs) == set(self.kwargs), f"{self.name} takes {self.kwargs}, got {sorted(kwargs)}"
        if self.reversible:
            return reverse(self.name, kwargs=kwargs)
        return "/" + re.sub(r"<(?:[^>:]+:)?([^>]+)>", lambda m: str(kwargs[m.group(1)]), self.path)


def _pattern_kwargs(pattern: Any) -> list[str]:
    converters = getattr(pattern, "converters", None)
    if converters:
        return list(converters)
    regex = getattr(pattern, "regex", None)
    return list(regex.groupindex) if regex is not None else []


def _walk(patterns: list[Any], prefix: str, namespace: str | None, kwargs: tuple[str, ...]) -> Iterator[Route]:
    for entry in patterns:
        full = prefix + str(entry.pattern)
        names = kwargs + tuple(_pattern_kwargs(entry.pattern))
        if isinstance(entry, URLResolver):
            inner = namespace
            if entry.namespace:
                inner = f"{namespace}:{entry.namespace}" if namespace else entry.namespace
            yield from _walk(entry.url_patterns, full, inner, names)
        elif isinstance(entry, URLPattern):
            if entry.name:
                name = f"{namespace}:{entry.name}" if namespace else entry.name
            else:
                name = full
            yield Route(name=name, path=full.lstrip("^"), kwargs=names, callback=entry.callback,
                        reversible=bool(entry.name))


def discover_api_routes(urlconf: str | None = None) -> dict[str, Route]:
    """Every route whose full path starts with /api/v1/, by name."""
    routes: dict[str, Route] = {}
    for route in _walk(get_resolver(urlconf).url_patterns, "", None, ()):
        if route.path.startswith(API_PREFIX):
            assert route.name not in routes, f"two API routes share the name {route.name!r}"
            routes[route.name] = route
    return routes


# --- the world: two tenants with data, callers of tenant B -----------------------------------------------


@dataclass
class Caller:
    label: str
    user: User
    password: str
    client: AppClient


@dataclass
class World:
    tenant_a: Tenant
    tenant_b: Tenant
    user_a: User
    owner_a: User
    user_b: User
    owner_b: User
    tokens_a: dict[str, Any]  # a live token pair of user_a (from tenant A's app)
    money_a: dict[str, Any] = field(default_factory=dict)  # user_a's account, a transfer and a hold

    def client_of_a(self, user: User) -> AppClient:
        client = AppClient(app_key_of(self.tenant_a))
        client.login_as(user)
        return client

    def caller_of_b(self, label: str) -> Caller:
        user, password = {"user_b": (self.user_b, DEFAULT_PASSWORD),
                          "owner_b": (self.owner_b, STAFF_PASSWORD)}[label]
        client = AppClient(app_key_of(self.tenant_b))
        client.login_as(user)
        return Caller(label=label, user=user, password=password, client=client)


def _tenant_owned_models() -> list[type[models.Model]]:
    """Every model with a `tenant` foreign key to Tenant (new apps are picked up without edits here)."""
    found = []
    for model in apps.get_models():
        try:
            tenant_field = model._meta.get_field("tenant")
        except Exception:
            continue
        if tenant_field.is_relation and tenant_field.related_model is Tenant:
            found.append(model)
    return found


def snapshot_of(tenant: Tenant) -> dict[str, list[dict[str, Any]]]:
    """Every row of `tenant`, across every tenant-owned model (unscoped base managers), plus the tenant."""
    snapshot = {"tenants.Tenant": list(Tenant.objects.filter(pk=tenant.pk).values())}
    for model in _tenant_owned_models():
        snapshot[model._meta.label] = list(model._base_manager.filter(tenant=tenant).order_by("pk").values())
    return snapshot


# Extra fields, beyond the primary key, whose values identify a row of another tenant.
FINGERPRINT_FIELDS: dict[str, tuple[str, ...]] = {
    "tenants.User": ("email", "username"),
    "tenants.AppKey": ("key",),
    "tenants.RefreshToken": ("token_hash",),
}


def fingerprints_of(world: World) -> set[str]:
    """Strings that must never appear in a response to tenant B: tenant A's ids (uuids only: small integer
    ids would match anything), emails, app keys, slug and live tokens."""
    tenant = world.tenant_a
    prints = {str(tenant.pk), tenant.slug, world.tokens_a["access"], world.tokens_a["refresh"]}
    for model in _tenant_owned_models():
        extra = FINGERPRINT_FIELDS.get(model._meta.label, ())
        for row in model._base_manager.filter(tenant=tenant).values("pk", *extra):
            if isinstance(row["pk"], uuid.UUID):
                prints.add(str(row["pk"]))
            prints.update(str(row[name]) for name in extra if row[name])
    return prints


def leaked(response: HttpResponse, prints: set[str]) -> list[str]:
    text = response.content.decode(errors="replace")
    text += json.dumps({k: v for k, v in response.items()})
    return sorted(p for p in prints if p in text)


def send(client: AppClient, method: str, url: str, body: dict[str, Any] | None) -> HttpResponse:
    if method in ("GET", "DELETE") and not body:
        return client.generic(method, url)
    # Writes that move money need an Idempotency-Key; a fresh one, so that the route itself answers.
    return client.generic(method, url, json.dumps(body or {}), content_type="application/json",
                          HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)


def problem_code(response: HttpResponse) -> str | None:
    try:
        return response.json().get("code")
    except ValueError:
        return None


# --- cases: how the matrix exercises each route -----------------------------------------------------------


Body = Callable[[World, Caller], dict[str, Any]]


@dataclass(frozen=True)
class ObjectCase:
    """A route with an object id. `make` creates tenant A's object and returns the URL kwargs for it."""

    make: Callable[[World], dict[str, Any]]
    methods: tuple[str, ...] | None = None  # default: every method the view implements
    body: Body | None = None  # default: an empty JSON object (a 404 must come before validation)
    #: whose object it is in tenant A ("user_a" or "owner_a"); they must NOT get a 404 (positive control)
    owner: str = "user_a"
    control_method: str | None = "GET"


@dataclass(frozen=True)
class ReadCase:
    """A GET without object id that lists or shows the caller's own data (never another tenant's)."""

    methods: tuple[str, ...] = ("GET",)
    status: int = 200


@dataclass(frozen=True)
class ActionCase:
    """A route without object id that acts for the caller; `body` aims it at tenant A where it can."""

    body: Body
    status: int
    code: str | None = None
    methods: tuple[str, ...] | None = None


Case = ObjectCase | ReadCase | ActionCase


def cases_of(value: Case | tuple[Case, ...] | None) -> tuple[Case, ...]:
    """A route serving two operations (GET lists, POST creates) registers a tuple of cases."""
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


def _new_password(world: World, caller: Caller) -> dict[str, Any]:
    return {"current_password": caller.password, "new_password": "a-fresh-passphrase-for-" + caller.label}


# One entry per API route. Adding an endpoint = adding one line here (or to EXEMPT, with a reason).
REGISTRY: dict[str, Case | tuple[Case, ...]] = {
    "me": ReadCase(),
    "me-password": ActionCase(body=_new_password, status=200),
    # tenant A's credentials through tenant B's app: A's account is not found there
    "auth-token": ActionCase(body=lambda w, c: {"email": w.user_a.email, "password": DEFAULT_PASSWORD},
                             status=401, code="invalid_credentials"),
    # tenant A's refresh token through tenant B's app
    "auth-token-refresh": ActionCase(body=lambda w, c: {"refresh": w.tokens_a["refresh"]}, status=401,
                                     code="token_tenant_mismatch"),
    # a caller of tenant B tries to end tenant A's session with its refresh token
    "auth-logout": ActionCase(body=lambda w, c: {"refresh": w.tokens_a["refresh"]}, status=401,
                              code="token_invalid"),
    "assets": ReadCase(),
    "accounts": ReadCase(),
    "account-entries": ObjectCase(make=lambda w: {"account_id": str(w.money_a["account"].pk)}),
    # B's caller tries to pay tenant A's user: A's users do not exist in B's app
    "transfers": (ReadCase(), ActionCase(body=lambda w, c: {"recipient": w.user_a.email, "asset": "USD",
                                                            "amount": "1"},
                                         status=404, code="recipient_not_found", methods=("POST",))),
    "transfer-detail": ObjectCase(make=lambda w: {"transfer_id": str(w.money_a["transfer"].pk)}),
    # B's caller can only hold its own (empty) account
    "holds": (ReadCase(), ActionCase(body=lambda w, c: {"asset": "USD", "amount": "1"}, status=409,
                                     code="insufficient_funds", methods=("POST",))),
    "hold-detail": ObjectCase(make=lambda w: {"hold_id": str(w.money_a["hold"].pk)}),
    "hold-post": ObjectCase(make=lambda w: {"hold_id": str(w.money_a["hold"].pk)}, control_method="POST"),
    "hold-void": ObjectCase(make=lambda w: {"hold_id": str(w.money_a["hold"].pk)}, control_method="POST"),
    # --- balances (wallet.balances) ---
    "balances": ReadCase(),
    "balance-preferences": (ReadCase(), ActionCase(body=lambda w, c: {"display_currency": "EUR"}, status=200,
                                                   methods=("PATCH",))),
    # B's caller links a sandbox account id of its own tenant's bank (A's links are not visible or touched)
    "bank-accounts": (ReadCase(), ActionCase(body=lambda w, c: {"account_ref": "sandbox-matrix-a"}, status=201,
                                             methods=("POST",))),
    # user_a's account, linked through the service (balances' own tests cover the link itself)
    "bank-account-detail": ObjectCase(make=lambda w: {"bank_account_id": str(
        __import__("wallet.balances.services", fromlist=["bank_account_link"]).bank_account_link(
            tenant=w.tenant_a, user=w.user_a, account_ref="sandbox-matrix-a").pk)}),

    # --- branding ---
    # tenant B's app key only ever resolves tenant B's branding (none published in the world: 404)
    "branding-runtime": ReadCase(status=404),

    # --- chains ---
    **__import__("tests.fixtures.chains.matrix", fromlist=["registry"]).registry(ObjectCase, ReadCase, ActionCase),
    # --- end ---
}

EXEMPT: dict[str, str] = {
    "auth-register": "creates a new user in the app key's tenant; takes no object id and reads nothing of "
                     "another tenant (the same email in another tenant is by design an unrelated account, "
                     "covered by the registration tests)",
    # --- balances (wallet.balances) ---

    # --- branding ---
    "branding-release-bundle": "authenticated by a per-tenant build token (not a user token) looked up within "
                               "the app key's tenant; tenant B's token against tenant A is covered by "
                               "tests/test_branding_api.py::test_tenant_b_build_token_cannot_fetch_tenant_a_bundle",
    # staff-only: an app user gets 403 and an owner acts on its own tenant, so the status differs per caller
    # (which one ActionCase cannot express); tenant B's owner reaching only tenant B is tested in
    # tests/test_branding_staff_api.py::test_tenant_b_owner_only_reaches_tenant_b_branding (the token/app key
    # mismatch is still checked here for these routes)
    "branding-draft": "staff-only, per-caller statuses: see tests/test_branding_staff_api.py",
    "branding-draft-check": "staff-only, per-caller statuses: see tests/test_branding_staff_api.py",
    "branding-release-publish": "staff-only, per-caller statuses: see tests/test_branding_staff_api.py",

    # --- chains ---
    **__import__("tests.fixtures.chains.matrix", fromlist=["EXEMPT"]).EXEMPT,
    # --- end ---
}


# --- the checks (shared by the matrix and its self-test) -------------------------------------------------


def methods_of(route: Route, case: Case) -> tuple[str, ...]:
    return case.methods or route.methods


def check_object_hidden(world: World, route: Route, case: ObjectCase, caller: Caller, method: str) -> None:
    """Tenant A's object answers 404 `not_found` to a caller of tenant B, and nothing of A changes."""
    kwargs = case.make(world)
    url = route.url(**kwargs)
    if case.control_method:
        control = send(world.client_of_a(getattr(world, case.owner)), case.control_method, url, None)
        assert control.status_code != 404, (
            f"positive control: {case.control_method} {url} by tenant A's {case.owner} got 404; the case for "
            f"{route.name} does not build a valid URL for tenant A's object"
        )
    before = snapshot_of(world.tenant_a)
    body = case.body(world, caller) if case.body else None

    response = send(caller.client, method, url, body)

    assert (response.status_code, problem_code(response)) == (404, "not_found"), (
        f"{method} {url} by tenant B's {caller.label}: {response.status_code} {response.content[:300]!r}"
    )
    assert snapshot_of(world.tenant_a) == before, f"{method} {url} by tenant B changed tenant A's rows"


def check_read_private(world: World, route: Route, case: ReadCase, caller: Caller, method: str) -> None:
    """A read route answers tenant B's caller without any of tenant A's fingerprints, changing nothing."""
    prints = fingerprints_of(world)
    before = snapshot_of(world.tenant_a)

    response = send(caller.client, method, route.url(), None)

    assert response.status_code == case.status, response.content[:300]
    assert leaked(response, prints) == [], f"{method} {route.path} by tenant B's {caller.label} leaks tenant A"
    assert snapshot_of(world.tenant_a) == before


def check_action_contained(world: World, route: Route, case: ActionCase, caller: Caller, method: str) -> None:
    """An action aimed at tenant A from tenant B's app answers as declared, leaks nothing, changes nothing."""
    prints = fingerprints_of(world)
    before = snapshot_of(world.tenant_a)

    response = send(caller.client, method, route.url(), case.body(world, caller))

    assert response.status_code == case.status, response.content[:300]
    if case.code is not None:
        assert problem_code(response) == case.code
    assert leaked(response, prints) == [], f"{method} {route.path} by tenant B's {caller.label} leaks tenant A"
    assert snapshot_of(world.tenant_a) == before, f"{method} {route.path} by tenant B changed tenant A's rows"


CHECKS: dict[type, Callable[..., None]] = {
    ObjectCase: check_object_hidden, ReadCase: check_read_private, ActionCase: check_action_contained,
}


def dummy_kwargs(route: Route) -> dict[str, Any]:
    """Well-formed values for a route's URL arguments (authentication runs before any lookup)."""
    pattern_values = {"int": 1, "uuid": uuid.uuid4(), "slug": "x", "str": "x", "path": "x"}
    values = {}
    for name in route.kwargs:
        match = re.search(rf"<(\w+):{name}>", route.path)
        values[name] = pattern_values.get(match.group(1) if match else "str", "x")
    return values


# --- collection-time parametrization ----------------------------------------------------------------------

ROUTES = discover_api_routes()
CALLERS_OF_B = ("user_b", "owner_b")
CALLERS_OF_A = ("user_a", "owner_a")


def _matrix_params() -> list[Any]:
    params = []
    for name, value in REGISTRY.items():
        route = ROUTES.get(name)
        if route is None:
            continue  # reported by test_every_api_route_is_covered
        for index, case in enumerate(cases_of(value)):
            for caller in CALLERS_OF_B:
                for method in methods_of(route, case):
                    params.append(pytest.param(name, index, caller, method, id=f"{name}-{caller}-{method}"))
    return params


def _mismatch_params() -> list[Any]:
    params = []
    for name, route in ROUTES.items():
        if not route.authenticates:
            continue
        cases = cases_of(REGISTRY.get(name))
        methods = sorted({m for case in cases for m in methods_of(route, case)}) if cases else route.methods
        for method in methods:
            for holder in CALLERS_OF_A:
                params.append(pytest.param(name, holder, method, id=f"{name}-{holder}-{method}"))
    return params


@pytest.fixture
def world(db: Any) -> World:
    tenant_a = TenantFactory(slug="tenant-a", name="Tenant A")
    tenant_b = TenantFactory(slug="tenant-b", name="Tenant B")
    user_a = UserFactory(tenant=tenant_a, email="alice@example.com", display_name="Alice")
    owner_a = make_staff(tenant_a, Membership.Role.OWNER)
    make_staff(tenant_a, Membership.Role.ADMIN)
    services.app_key_create(tenant=tenant_a, label="second build")
    user_b = UserFactory(tenant=tenant_b, email="bob@example.com", display_name="Bob")
    owner_b = make_staff(tenant_b, Membership.Role.OWNER)
    tokens_a = AppClient(app_key_of(tenant_a)).login_as(user_a)
    # Money of tenant A: user_a funded, a transfer to the owner, an active hold.
    usd = enable(tenant_a, "USD")
    enable(tenant_b, "USD")
    fund(user_a, 10_000)
    transfer = ledger_services.transfer_create(tenant=tenant_a, sender=user_a, recipient=owner_a, asset=usd,
                                               amount=100)
    hold = ledger_services.hold_place(tenant=tenant_a, account=account(user_a), amount=50)
    money_a = {"account": account(user_a), "transfer": transfer, "hold": hold}
    return World(tenant_a=tenant_a, tenant_b=tenant_b, user_a=user_a, owner_a=owner_a, user_b=user_b,
                 owner_b=owner_b, tokens_a=tokens_a, money_a=money_a)


# --- the matrix -----------------------------------------------------------------------------------------


def test_every_api_route_is_covered() -> None:
    # given the API routes discovered from the URL conf, the registry and the exemptions
    discovered = set(ROUTES)

    # when they are compared
    uncovered = sorted(discovered - set(REGISTRY) - set(EXEMPT))
    stale = sorted((set(REGISTRY) | set(EXEMPT)) - discovered)
    both = sorted(set(REGISTRY) & set(EXEMPT))

    # then every route is covered exactly once, and nothing named is gone
    assert uncovered == [], (
        "API routes not covered by the cross-tenant matrix; add each to REGISTRY in "
        "tests/test_cross_tenant_matrix.py (or to EXEMPT with a reason): "
        + ", ".join(f"{name} ({ROUTES[name].path}, kwargs={list(ROUTES[name].kwargs)})" for name in uncovered)
    )
    assert stale == [], f"REGISTRY/EXEMPT name routes that no longer exist: {stale}"
    assert both == [], f"routes both registered and exempt: {both}"
    assert all(reason.strip() for reason in EXEMPT.values()), "every exemption needs a written reason"


def test_registry_cases_fit_their_routes() -> None:
    # given every registered route that exists
    problems = []
    for name, case in [(n, c) for n, value in REGISTRY.items() for c in cases_of(value)]:
        route = ROUTES.get(name)
        if route is None:
            continue

        # then a route with URL arguments is an ObjectCase and one without is not
        if route.kwargs and not isinstance(case, ObjectCase):
            problems.append(f"{name} takes {list(route.kwargs)}: describe it with ObjectCase")
        if not route.kwargs and isinstance(case, ObjectCase):
            problems.append(f"{name} takes no object id: use ReadCase or ActionCase")
        # and every method named is one the view implements
        unknown = set(methods_of(route, case)) - set(route.methods)
        if unknown:
            problems.append(f"{name}: methods {sorted(unknown)} are not implemented (has {route.methods})")
        if not methods_of(route, case):
            problems.append(f"{name}: no method to exercise")
    assert problems == []


def test_discovery_finds_todays_api_routes() -> None:
    # given the URL conf; then the routes known when this test was written are found with their paths
    expected = {
        "auth-register": "api/v1/auth/register", "auth-token": "api/v1/auth/token",
        "auth-token-refresh": "api/v1/auth/token/refresh", "auth-logout": "api/v1/auth/logout",
        "me": "api/v1/me", "me-password": "api/v1/me/password",
    }
    assert {name: ROUTES[name].path for name in expected if name in ROUTES} == expected
    assert all(ROUTES[name].kwargs == () for name in expected)
    assert not any(route.path.startswith("admin/") for route in ROUTES.values())


@pytest.mark.parametrize(("route_name", "case_index", "caller_label", "method"), _matrix_params())
def test_tenant_b_cannot_reach_tenant_a(world: World, route_name: str, case_index: int, caller_label: str,
                                        method: str) -> None:
    # given tenant A's data and a caller of tenant B signed in through tenant B's app
    route, case = ROUTES[route_name], cases_of(REGISTRY[route_name])[case_index]
    caller = world.caller_of_b(caller_label)

    # when the caller exercises the route against tenant A; then it is refused or sees only its own tenant
    CHECKS[type(case)](world, route, case, caller, method)


@pytest.mark.parametrize(("route_name", "holder", "method"), _mismatch_params())
def test_tenant_a_token_with_tenant_b_app_key_is_refused(world: World, route_name: str, holder: str,
                                                         method: str) -> None:
    # given a token of tenant A presented with tenant B's app key
    route = ROUTES[route_name]
    objects = [c for c in cases_of(REGISTRY.get(route_name)) if isinstance(c, ObjectCase)]
    kwargs = objects[0].make(world) if objects else dummy_kwargs(route)
    client = AppClient(app_key_of(world.tenant_b))
    client.login_as(getattr(world, holder))
    before_a, before_b = snapshot_of(world.tenant_a), snapshot_of(world.tenant_b)

    # when it is used on the route
    response = send(client, method, route.url(**kwargs), {})

    # then it is refused as a tenant mismatch and neither tenant changed
    assert (response.status_code, problem_code(response)) == (401, "token_tenant_mismatch"), response.content
    assert snapshot_of(world.tenant_a) == before_a
    assert snapshot_of(world.tenant_b) == before_b


def test_mismatch_matrix_is_not_empty() -> None:
    # the "me" route authenticates today; if discovery stopped seeing authenticating views, this says so
    assert any(p.values[0] == "me" for p in _mismatch_params())


# --- the matrix tests itself ------------------------------------------------------------------------------
# Probe endpoints, mounted only by `pytest.mark.urls(__name__)`: one looks an app key up by id within the
# caller's tenant, one (deliberately wrong) across tenants; one lists users of the caller's tenant, one of all.


class _ScopedKeyProbe(APIView):
    def get(self, request: Request, key_id: uuid.UUID) -> Response:
        key = access_by_id(AppKey, tenant=request._request.tenant, object_id=key_id)
        return Response({"id": str(key.pk), "label": key.label})


class _LeakyKeyProbe(APIView):
    def get(self, request: Request, key_id: uuid.UUID) -> Response:
        key = AppKey.all_tenants.get(pk=key_id)  # the bug the matrix exists to catch: no tenant filter
        return Response({"id": str(key.pk), "label": key.label})


class _ScopedUsersProbe(APIView):
    def get(self, request: Request) -> Response:
        return Response([u.email for u in User.objects.filter(tenant=request._request.tenant)])


class _LeakyUsersProbe(APIView):
    def get(self, request: Request) -> Response:
        return Response([u.email for u in User.objects.filter(tenant__isnull=False)])


urlpatterns = [  # only for the self-test below
    path("api/v1/probe/", include(([
        path("keys/<uuid:key_id>", _ScopedKeyProbe.as_view(), name="scoped-key"),
        path("leaky-keys/<uuid:key_id>", _LeakyKeyProbe.as_view(), name="leaky-key"),
        path("users", _ScopedUsersProbe.as_view(), name="scoped-users"),
        path("leaky-users", _LeakyUsersProbe.as_view(), name="leaky-users"),
    ], "probe"))),
    path("elsewhere/<int:n>", _ScopedUsersProbe.as_view(), name="not-api"),
]

_PROBE_KEY_CASE = ObjectCase(
    make=lambda w: {"key_id": AppKey.all_tenants.filter(tenant=w.tenant_a).order_by("created_at").first().pk},
)


@pytest.mark.urls(__name__)
def test_self_discovery_walks_includes_namespaces_and_converters() -> None:
    routes = discover_api_routes()
    assert sorted(routes) == ["probe:leaky-key", "probe:leaky-users", "probe:scoped-key", "probe:scoped-users"]
    assert routes["probe:scoped-key"].path == "api/v1/probe/keys/<uuid:key_id>"
    assert routes["probe:scoped-key"].kwargs == ("key_id",)
    assert routes["probe:scoped-key"].methods == ("GET",)
    assert routes["probe:scoped-key"].authenticates is True


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("caller_label", CALLERS_OF_B)
def test_self_object_check_passes_a_scoped_endpoint_and_fails_a_leaky_one(world: World,
                                                                          caller_label: str) -> None:
    routes = discover_api_routes()
    caller = world.caller_of_b(caller_label)

    check_object_hidden(world, routes["probe:scoped-key"], _PROBE_KEY_CASE, caller, "GET")
    with pytest.raises(AssertionError, match="404"):
        check_object_hidden(world, routes["probe:leaky-key"], _PROBE_KEY_CASE, caller, "GET")


@pytest.mark.urls(__name__)
def test_self_read_check_passes_a_scoped_list_and_fails_a_leaky_one(world: World) -> None:
    routes = discover_api_routes()
    caller = world.caller_of_b("user_b")

    check_read_private(world, routes["probe:scoped-users"], ReadCase(), caller, "GET")
    with pytest.raises(AssertionError, match="leaks tenant A"):
        check_read_private(world, routes["probe:leaky-users"], ReadCase(), caller, "GET")
