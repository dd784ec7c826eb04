"""Drafts and releases: publishing freezes a validated, numbered, hashed release and tells the tenant's
apps (outbox event) in the same transaction."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from branding import services
from branding.errors import BrandingInvalid, BrandingUnchanged
from branding.models import BrandingRelease
from branding.release import content_hash
from branding.selectors import draft_get, release_list
from tenants.models import Tenant, User
from tests.fixtures.branding.helpers import _branding_media, publish_sample  # noqa: F401 (autouse fixture)
from wallet.events.models import OutboxEvent
from wallet.events.streams import tenant_stream


def test_publish_freezes_a_numbered_hashed_release_and_emits_an_event(tenant_a: Tenant, owner_a: User) -> None:
    # given a tenant whose complete sample draft is published
    document = publish_sample(tenant_a, actor=owner_a)

    # then release 1 holds the document, resolved schemes and palettes, hashed canonically
    release = release_list(tenant=tenant_a).get()
    assert release.number == 1
    assert release.published_by == owner_a
    assert release.content["brand"]["identity"] == {**document["identity"]}
    assert release.content["schemes"]["light"]["primary"].startswith("#")
    assert set(release.content["palettes"]) == {"primary", "secondary", "tertiary", "neutral", "neutral_variant",
                                                "error"}
    assert release.content_hash == content_hash(release.content)
    # and branding.released went to the tenant stream in the same transaction
    event = OutboxEvent.all_tenants.get(tenant=tenant_a, type="branding.released")
    assert event.stream == tenant_stream(tenant_a.pk)
    assert event.data == {"release": 1, "content_hash": release.content_hash, "etag": release.etag}


def test_an_unchanged_draft_is_not_published_twice(tenant_a: Tenant) -> None:
    publish_sample(tenant_a)

    with pytest.raises(BrandingUnchanged):
        services.branding_release_publish(tenant=tenant_a)

    assert release_list(tenant=tenant_a).count() == 1


def test_a_changed_draft_becomes_release_two_and_release_one_is_unchanged(tenant_a: Tenant) -> None:
    document = publish_sample(tenant_a)
    first = release_list(tenant=tenant_a).get()
    changed = copy.deepcopy(document)
    changed["colors"]["seed"] = "#006C4C"
    services.branding_draft_update(tenant=tenant_a, content=changed)

    second = services.branding_release_publish(tenant=tenant_a)

    assert second.number == 2
    assert second.content_hash != first.content_hash
    first_again = BrandingRelease.all_tenants.get(pk=first.pk)
    assert (first_again.content, first_again.content_hash) == (first.content, first.content_hash)


def test_an_invalid_draft_is_refused_with_pointers_and_nothing_is_published(tenant_a: Tenant) -> None:
    document = publish_sample(tenant_a, publish=False)
    broken: dict[str, Any] = copy.deepcopy(document)
    broken["identity"]["ios_bundle_id"] = "not a bundle id"
    broken["copy"]["locales"]["en"]["terms_url"] = "http://insecure.example.com/terms"
    broken["colors"]["light"] = {"on_primary": "#777777"}
    services.branding_draft_update(tenant=tenant_a, content=broken)

    with pytest.raises(BrandingInvalid) as caught:
        services.branding_release_publish(tenant=tenant_a)

    pointers = {(p.pointer, p.code) for p in caught.value.problems}
    assert ("/identity/ios_bundle_id", "invalid_bundle_id") in pointers
    assert ("/copy/locales/en/terms_url", "https_required") in pointers
    assert ("/colors/light/on_primary", "contrast_too_low") in pointers
    assert caught.value.extra["errors"][0].keys() == {"pointer", "code", "detail"}
    assert release_list(tenant=tenant_a).count() == 0
    assert not OutboxEvent.all_tenants.filter(tenant=tenant_a, type="branding.released").exists()


def test_releases_are_per_tenant(tenant_a: Tenant, tenant_b: Tenant) -> None:
    publish_sample(tenant_a)
    publish_sample(tenant_b)

    assert [r.number for r in release_list(tenant=tenant_a)] == [1]
    assert [r.number for r in release_list(tenant=tenant_b)] == [1]
    assert draft_get(tenant=tenant_a).content["identity"]["display_name"] == "Tenant A"
    assert draft_get(tenant=tenant_b).content["identity"]["display_name"] == "Tenant B"


def test_seed_demo_publishes_the_demo_branding_once(db: Any) -> None:
    import io
    import json

    from django.core.management import call_command

    from tests.conftest import AppClient

    out = io.StringIO()
    call_command("seed_demo", "--json", stdout=out)
    call_command("seed_demo", "--json", stdout=io.StringIO())
    creds = json.loads(out.getvalue())

    demo = Tenant.objects.get(slug="demo")
    assert [r.number for r in release_list(tenant=demo)] == [1]
    response = AppClient(creds["app_key"]).get("/api/v1/branding")
    assert response.status_code == 200
    assert json.loads(response.content)["runtime"]["app_key"] == creds["app_key"]
