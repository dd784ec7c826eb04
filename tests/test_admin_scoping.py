"""Django admin scoping: tenant staff see and change only their own tenant, through real admin pages.

Every test drives the admin with Django's test client (`force_login`, real URLs, real forms), and on a
refused path asserts that nothing happened (no row created, no field changed, nothing revoked).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.http import HttpResponse
from django.test import Client

from tenants import services
from tenants.models import AppKey, AuditLogEntry, Membership, Tenant, User
from tests.conftest import app_key_of, make_staff
from tests.factories import DEFAULT_PASSWORD, UserFactory

STAFF_PASSWORD = "staff-password-123"  # what `make_staff` gives every staff member
NEW_PASSWORD = "a-long-and-unusual-passphrase-42"

USER_CHANGELIST = "/admin/tenants/user/"
USER_ADD = "/admin/tenants/user/add/"
MEMBERSHIP_CHANGELIST = "/admin/tenants/membership/"
MEMBERSHIP_ADD = "/admin/tenants/membership/add/"
APPKEY_CHANGELIST = "/admin/tenants/appkey/"
TENANT_CHANGELIST = "/admin/tenants/tenant/"
AUDIT_CHANGELIST = "/admin/tenants/auditlogentry/"
MEMBERSHIP_USER_AUTOCOMPLETE = "/admin/autocomplete/?app_label=tenants&model_name=membership&field_name=user"


# --- helpers ----------------------------------------------------------------------------------------------


def admin_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def change_url(obj: Any) -> str:
    return f"/admin/tenants/{obj._meta.model_name}/{obj.pk}/change/"


def html(response: HttpResponse) -> str:
    return response.content.decode()


def messages_of(response: HttpResponse) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def changelist_pks(response: HttpResponse) -> set[str]:
    return {str(obj.pk) for obj in response.context["cl"].result_list}


def filter_titles(response: HttpResponse) -> list[str]:
    return [str(spec.title) for spec in response.context["cl"].filter_specs]


def form_errors(response: HttpResponse) -> dict[str, list[str]]:
    form = response.context["adminform"].form
    return {field: [str(e) for e in errors] for field, errors in form.errors.items()}


def assert_not_opened(response: HttpResponse, *, secret: str) -> None:
    """Django admin answers a foreign (out-of-queryset) id like a missing one: a redirect to the index with a
    "doesn't exist" message (or a 404). Either way the page must not render the object."""
    assert response.status_code in (302, 404), response.status_code
    if response.status_code == 302:
        assert response["Location"] == "/admin/"
        assert any("doesn\u2019t exist" in message for message in messages_of(response))
    assert secret not in html(response)


def user_change_post(user: User, **overrides: Any) -> dict[str, Any]:
    """The POST body of the user change form (as a tenant manager sees it: no tenant/staff/superuser)."""
    data = {
        "email": user.email,
        "display_name": user.display_name,
        "new_password": "",
        "is_active": "on" if user.is_active else "",
        "_save": "Save",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# --- users: list, change, add ------------------------------------------------------------------------------


def test_superuser_sees_the_users_of_every_tenant(superuser, user_a, user_b, owner_a, owner_b) -> None:
    # given a superuser
    client = admin_client(superuser)

    # when they open the user changelist
    response = client.get(USER_CHANGELIST)

    # then users of both tenants are listed
    assert response.status_code == 200
    assert changelist_pks(response) == {str(u.pk) for u in (superuser, user_a, user_b, owner_a, owner_b)}
    for email in ("alice@example.com", "bob@example.com", "owner@tenant-a.example", "owner@tenant-b.example"):
        assert email in html(response)


def test_tenant_owner_sees_only_their_tenants_users(superuser, user_a, user_b, owner_a, owner_b) -> None:
    # given tenant A's owner, with users in both tenants and a platform operator
    client = admin_client(owner_a)

    # when they open the user changelist
    response = client.get(USER_CHANGELIST)

    # then only tenant A's users are listed, and the tenant column is gone
    assert response.status_code == 200
    assert changelist_pks(response) == {str(user_a.pk), str(owner_a.pk)}
    page = html(response)
    assert "alice@example.com" in page
    assert "owner@tenant-a.example" in page
    assert "bob@example.com" not in page
    assert "owner@tenant-b.example" not in page
    assert "root@platform.example" not in page
    assert "tenant" not in response.context["cl"].list_display


def test_tenant_owner_search_does_not_reach_another_tenant(user_a, user_b, owner_a) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they search for tenant B's user
    response = client.get(USER_CHANGELIST, {"q": "bob"})

    # then nothing is found
    assert response.status_code == 200
    assert response.context["cl"].result_count == 0
    assert "bob@example.com" not in html(response)


def test_tenant_admin_cannot_open_another_tenants_user(admin_a, user_b) -> None:
    # given tenant A's admin
    client = admin_client(admin_a)

    # when they open tenant B's user by id
    response = client.get(change_url(user_b))

    # then the admin behaves as if the user did not exist
    assert_not_opened(response, secret="bob@example.com")


def test_tenant_admin_cannot_change_another_tenants_user(admin_a, user_b) -> None:
    # given tenant A's admin
    client = admin_client(admin_a)

    # when they post a change to tenant B's user
    response = client.post(change_url(user_b), user_change_post(user_b, display_name="hijacked",
                                                                   password=NEW_PASSWORD))

    # then nothing changed
    assert_not_opened(response, secret="bob@example.com")
    user_b.refresh_from_db()
    assert user_b.display_name == ""
    assert user_b.check_password(DEFAULT_PASSWORD)


def test_tenant_admin_adds_users_only_to_their_own_tenant(admin_a, tenant_a, tenant_b) -> None:
    # given tenant A's admin
    client = admin_client(admin_a)

    # when they create a user, smuggling in tenant B, superuser and staff flags
    response = client.post(USER_ADD, {
        "tenant": str(tenant_b.pk), "email": "carol@example.com", "display_name": "Carol",
        "new_password": NEW_PASSWORD, "is_active": "on", "is_staff": "on", "is_superuser": "on", "_save": "Save",
    })

    # then the user is created in tenant A, as a plain user
    assert response.status_code == 302, form_errors(response)
    created = User.objects.get(email="carol@example.com")
    assert created.tenant_id == tenant_a.pk
    assert created.is_superuser is False
    assert created.is_staff is False
    assert created.username == f"{tenant_a.pk}/carol@example.com"
    assert created.check_password(NEW_PASSWORD)
    assert User.objects.filter(email="carol@example.com", tenant=tenant_b).exists() is False


def test_tenant_admin_add_form_has_no_tenant_or_privilege_fields(admin_a) -> None:
    # given tenant A's admin
    client = admin_client(admin_a)

    # when they open the add-user form
    response = client.get(USER_ADD)

    # then tenant, is_staff and is_superuser are not offered
    assert response.status_code == 200
    assert list(response.context["adminform"].form.fields) == ["email", "display_name", "new_password", "is_active"]


def test_tenant_admin_adding_a_duplicate_email_gets_a_form_error(admin_a, user_a) -> None:
    # given tenant A's admin and an existing tenant A user alice@example.com
    client = admin_client(admin_a)

    # when they add another user with the same email (different case)
    response = client.post(USER_ADD, {
        "email": "Alice@Example.com", "display_name": "", "new_password": NEW_PASSWORD, "is_active": "on",
        "_save": "Save",
    })

    # then the form refuses it and no user is created
    assert response.status_code == 200
    assert form_errors(response) == {"email": ["An account with this email already exists in this tenant."]}
    assert User.objects.filter(email__iexact="alice@example.com").count() == 1


def test_tenant_admin_may_add_an_email_that_exists_only_on_the_platform(admin_a, tenant_a, superuser) -> None:
    # given tenant A's admin and a platform operator root@platform.example
    client = admin_client(admin_a)

    # when they add a tenant A user with the operator's email (an unrelated account in another namespace)
    response = client.post(USER_ADD, {
        "email": "root@platform.example", "display_name": "", "new_password": NEW_PASSWORD, "is_active": "on",
        "_save": "Save",
    })

    # then it is created in tenant A (and the form does not reveal that the platform email exists)
    assert response.status_code == 302, form_errors(response)
    assert User.objects.filter(email="root@platform.example", tenant=tenant_a).count() == 1


# --- memberships: FK choices, autocomplete, role escalation ------------------------------------------------


def test_membership_user_autocomplete_offers_only_own_tenant_users(superuser, owner_a, user_a, user_b,
                                                                   owner_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when the membership form's user autocomplete is queried
    response = client.get(MEMBERSHIP_USER_AUTOCOMPLETE)

    # then only tenant A's users come back
    assert response.status_code == 200
    results = response.json()["results"]
    assert {r["id"] for r in results} == {str(user_a.pk), str(owner_a.pk)}
    assert sorted(r["text"] for r in results) == ["alice@example.com", "owner@tenant-a.example"]


def test_tenant_owner_lists_only_their_tenants_memberships(owner_a, admin_a, owner_b, tenant_a) -> None:
    # given staff in both tenants
    client = admin_client(owner_a)

    # when tenant A's owner opens the membership changelist
    response = client.get(MEMBERSHIP_CHANGELIST)

    # then only tenant A's memberships are listed, filterable by role only
    assert response.status_code == 200
    assert changelist_pks(response) == {str(m.pk) for m in Membership.all_tenants.filter(tenant=tenant_a)}
    assert len(changelist_pks(response)) == 2
    assert filter_titles(response) == ["role"]
    assert "owner@tenant-b.example" not in html(response)


def test_membership_add_form_user_choices_are_own_tenant_users(superuser, owner_a, user_a, user_b,
                                                               owner_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they open the add-membership form
    response = client.get(MEMBERSHIP_ADD)

    # then the user field (an autocomplete) is limited to tenant A's users and the tenant is not asked
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert list(form.fields) == ["user", "role"]
    assert {str(pk) for pk in form.fields["user"].queryset.values_list("pk", flat=True)} == {
        str(user_a.pk), str(owner_a.pk)}
    assert "bob@example.com" not in html(response)


def test_membership_user_autocomplete_search_finds_nothing_in_another_tenant(owner_a, user_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they search the autocomplete for tenant B's user
    response = client.get(MEMBERSHIP_USER_AUTOCOMPLETE + "&term=bob")

    # then nothing is found
    assert response.status_code == 200
    assert response.json() == {"results": [], "pagination": {"more": False}}


def test_superuser_membership_autocomplete_offers_every_tenants_users(superuser, owner_a, user_a,
                                                                      user_b) -> None:
    # given a superuser
    client = admin_client(superuser)

    # when the membership form's user autocomplete is queried
    response = client.get(MEMBERSHIP_USER_AUTOCOMPLETE)

    # then users of both tenants are offered
    assert response.status_code == 200
    ids = {r["id"] for r in response.json()["results"]}
    assert {str(user_a.pk), str(owner_a.pk), str(user_b.pk)} <= ids


def test_tenant_owner_cannot_make_another_tenants_user_a_member(owner_a, user_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they post a membership for tenant B's user
    response = client.post(MEMBERSHIP_ADD, {"user": str(user_b.pk), "role": "viewer", "_save": "Save"})

    # then the form refuses the user and nothing is created
    assert response.status_code == 200
    assert list(form_errors(response)) == ["user"]
    assert Membership.all_tenants.filter(user=user_b).exists() is False
    user_b.refresh_from_db()
    assert user_b.is_staff is False


def test_tenant_owner_adds_a_member_of_their_own_tenant(owner_a, user_a, tenant_a, tenant_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they make tenant A's user a viewer (smuggling in tenant B)
    response = client.post(MEMBERSHIP_ADD, {"user": str(user_a.pk), "role": "viewer",
                                            "tenant": str(tenant_b.pk), "_save": "Save"})

    # then the membership is created in tenant A and the user becomes staff
    assert response.status_code == 302, form_errors(response)
    membership = Membership.all_tenants.get(user=user_a)
    assert membership.tenant_id == tenant_a.pk
    assert membership.role == "viewer"
    user_a.refresh_from_db()
    assert user_a.is_staff is True


def test_admin_role_is_not_offered_the_owner_role(admin_a) -> None:
    # given an admin-role member of tenant A
    client = admin_client(admin_a)

    # when they open the add-membership form
    response = client.get(MEMBERSHIP_ADD)

    # then the role choices stop at their own rank
    assert response.status_code == 200
    assert list(response.context["adminform"].form.fields) == ["user", "role"]
    role_values = [value for value, _ in response.context["adminform"].form.fields["role"].choices]
    assert role_values == ["admin", "support", "viewer"]


def test_admin_role_cannot_create_an_owner(admin_a, user_a) -> None:
    # given an admin-role member of tenant A
    client = admin_client(admin_a)

    # when they post an owner membership for a tenant A user
    response = client.post(MEMBERSHIP_ADD, {"user": str(user_a.pk), "role": "owner", "_save": "Save"})

    # then the form refuses the role and nothing is created
    assert response.status_code == 200
    assert list(form_errors(response)) == ["role"]
    assert Membership.all_tenants.filter(user=user_a).exists() is False
    user_a.refresh_from_db()
    assert user_a.is_staff is False


def test_admin_role_cannot_promote_themselves_to_owner(admin_a) -> None:
    # given an admin-role member of tenant A
    client = admin_client(admin_a)
    own = Membership.all_tenants.get(user=admin_a)

    # when they post owner onto their own membership
    response = client.post(change_url(own), {"user": str(admin_a.pk), "role": "owner", "_save": "Save"})

    # then the form refuses it and the role is unchanged
    assert response.status_code == 200
    assert list(form_errors(response)) == ["role"]
    own.refresh_from_db()
    assert own.role == "admin"


def test_admin_role_cannot_change_the_owners_membership(admin_a, owner_a) -> None:
    # given an admin-role member and the owner of tenant A
    client = admin_client(admin_a)
    owner_membership = Membership.all_tenants.get(user=owner_a)

    # when the admin posts a demotion of the owner
    response = client.post(change_url(owner_membership), {"user": str(owner_a.pk), "role": "viewer",
                                                           "_save": "Save"})

    # then it is forbidden and the owner stays owner
    assert response.status_code == 403
    owner_membership.refresh_from_db()
    assert owner_membership.role == "owner"


def test_admin_role_cannot_delete_the_owners_membership_with_the_bulk_action(admin_a, owner_a) -> None:
    # given an admin-role member and the owner of tenant A
    client = admin_client(admin_a)
    owner_membership = Membership.all_tenants.get(user=owner_a)

    # when the admin confirms "delete selected" on the owner's membership
    response = client.post(MEMBERSHIP_CHANGELIST, {
        "action": "delete_selected", "_selected_action": [str(owner_membership.pk)], "post": "yes",
    })

    # then it is forbidden and the membership survives
    assert response.status_code == 403
    assert Membership.all_tenants.filter(pk=owner_membership.pk).exists()


def test_admin_role_cannot_reset_the_owners_password(admin_a, owner_a) -> None:
    # given an admin-role member and the owner of tenant A
    client = admin_client(admin_a)

    # when the admin posts a new password onto the owner's user
    response = client.post(change_url(owner_a), user_change_post(owner_a, password=NEW_PASSWORD))

    # then it is refused (nobody edits a member above them) and the owner's password is unchanged
    assert response.status_code == 403
    owner_a.refresh_from_db()
    assert owner_a.check_password(STAFF_PASSWORD)
    assert owner_a.check_password(NEW_PASSWORD) is False


def test_support_role_cannot_deactivate_the_owner(tenant_a, owner_a) -> None:
    # given a support-role member and the owner of tenant A
    support = make_staff(tenant_a, Membership.Role.SUPPORT)
    client = admin_client(support)

    # when support posts is_active off onto the owner's user
    response = client.post(change_url(owner_a), user_change_post(owner_a, is_active=""))

    # then it is refused and the owner stays active
    assert response.status_code == 403
    owner_a.refresh_from_db()
    assert owner_a.is_active is True


# --- filters --------------------------------------------------------------------------------------------


def test_superuser_user_changelist_filters_by_tenant(superuser, tenant_a, tenant_b) -> None:
    # given a superuser
    client = admin_client(superuser)

    # when they open the user changelist
    response = client.get(USER_CHANGELIST)

    # then a tenant filter lists both tenants
    assert filter_titles(response) == ["tenant", "is active", "is staff"]
    tenant_filter = response.context["cl"].filter_specs[0]
    choices = [choice["display"] for choice in tenant_filter.choices(response.context["cl"])]
    assert choices == ["All", "Tenant A (tenant-a)", "Tenant B (tenant-b)", "-"]


def test_tenant_owner_user_changelist_has_no_tenant_filter(owner_a, owner_b, user_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they open the user changelist
    response = client.get(USER_CHANGELIST)

    # then there is no tenant filter and tenant B appears nowhere
    assert response.status_code == 200
    assert filter_titles(response) == ["is active", "is staff"]
    page = html(response)
    assert "tenant-b" not in page
    assert "Tenant B" not in page


def test_tenant_owner_user_changelist_ignores_a_forged_tenant_filter(owner_a, user_a, user_b, tenant_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they forge a tenant filter for tenant B in the query string
    response = client.get(USER_CHANGELIST, {"tenant__id__exact": str(tenant_b.pk)})

    # then tenant B's users are still not listed
    assert response.status_code == 200
    assert response.context["cl"].result_count == 0
    assert "bob@example.com" not in html(response)


def test_tenant_owner_appkey_changelist_has_no_tenant_filter_and_only_own_keys(owner_a, tenant_a,
                                                                               tenant_b) -> None:
    # given tenant A's owner, and an app key per tenant
    client = admin_client(owner_a)

    # when they open the app key changelist
    response = client.get(APPKEY_CHANGELIST)

    # then only tenant A's key is listed and there is no tenant filter
    assert response.status_code == 200
    assert filter_titles(response) == []
    assert changelist_pks(response) == {str(k.pk) for k in AppKey.all_tenants.filter(tenant=tenant_a)}
    page = html(response)
    assert app_key_of(tenant_a) in page
    assert app_key_of(tenant_b) not in page
    assert "tenant-b" not in page


def test_superuser_appkey_changelist_filters_by_tenant(superuser, tenant_a, tenant_b) -> None:
    # given a superuser
    client = admin_client(superuser)

    # when they open the app key changelist
    response = client.get(APPKEY_CHANGELIST)

    # then keys of both tenants are listed and the tenant filter is offered
    assert filter_titles(response) == ["tenant"]
    assert changelist_pks(response) == {str(k.pk) for k in AppKey.all_tenants.all()}


# --- actions --------------------------------------------------------------------------------------------


def test_revoke_action_ignores_another_tenants_key(admin_a, tenant_a, tenant_b) -> None:
    # given tenant A's admin and tenant B's live app key
    client = admin_client(admin_a)
    key_b = AppKey.all_tenants.get(tenant=tenant_b)

    # when they post the revoke action with tenant B's key selected
    response = client.post(APPKEY_CHANGELIST, {"action": "revoke", "_selected_action": [str(key_b.pk)]})

    # then tenant B's key is untouched, and no audit entry names it
    assert response.status_code == 302
    key_b.refresh_from_db()
    assert key_b.revoked_at is None
    assert AuditLogEntry.objects.filter(object_id=str(key_b.pk), action="admin.action.revoke").exists() is False
    assert messages_of(response) == ["Revoked 0 key(s)."]


def test_revoke_action_across_all_revokes_only_own_tenants_keys(admin_a, tenant_a, tenant_b) -> None:
    # given tenant A's admin, and an app key per tenant
    client = admin_client(admin_a)
    key_a = AppKey.all_tenants.get(tenant=tenant_a)
    key_b = AppKey.all_tenants.get(tenant=tenant_b)

    # when they run revoke with "select all" across pages
    response = client.post(APPKEY_CHANGELIST, {
        "action": "revoke", "select_across": "1", "_selected_action": [str(key_a.pk)],
    })

    # then tenant A's key is revoked and tenant B's is not
    assert response.status_code == 302
    key_a.refresh_from_db()
    key_b.refresh_from_db()
    assert key_a.revoked_at is not None
    assert key_b.revoked_at is None


def test_revoke_action_on_own_key_is_audited(admin_a, tenant_a) -> None:
    # given tenant A's admin and its live key
    client = admin_client(admin_a)
    key_a = AppKey.all_tenants.get(tenant=tenant_a)

    # when they revoke it
    response = client.post(APPKEY_CHANGELIST, {"action": "revoke", "_selected_action": [str(key_a.pk)]})

    # then it is revoked and an audit entry records who did it
    assert response.status_code == 302
    key_a.refresh_from_db()
    assert key_a.revoked_at is not None
    entry = AuditLogEntry.objects.get(action="admin.action.revoke")
    assert (entry.tenant_id, entry.actor_id, entry.object_id) == (tenant_a.pk, admin_a.pk, str(key_a.pk))


# --- tenants --------------------------------------------------------------------------------------------


def test_tenant_owner_sees_only_their_tenant(owner_a, tenant_a, tenant_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they open the tenant changelist
    response = client.get(TENANT_CHANGELIST)

    # then only tenant A is listed
    assert response.status_code == 200
    assert changelist_pks(response) == {str(tenant_a.pk)}
    assert "tenant-a" in html(response)
    assert "tenant-b" not in html(response)


def test_tenant_owner_cannot_open_another_tenant(owner_a, tenant_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they open tenant B by id
    response = client.get(change_url(tenant_b))

    # then the admin behaves as if it did not exist
    assert_not_opened(response, secret="tenant-b")


def test_tenant_owner_cannot_suspend_another_tenant_or_change_its_status(owner_a, tenant_a, tenant_b) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they post the suspend action on tenant B and a status change on tenant A
    action = client.post(TENANT_CHANGELIST, {"action": "suspend", "_selected_action": [str(tenant_b.pk)]})
    change = client.post(change_url(tenant_a), {"name": "Tenant A", "allowed_origins": "[]",
                                                "status": "suspended", "_save": "Save"})

    # then neither tenant's status changed
    assert action.status_code == 200  # an unknown action re-renders the changelist
    assert change.status_code == 302
    tenant_a.refresh_from_db()
    tenant_b.refresh_from_db()
    assert tenant_a.status == Tenant.Status.ACTIVE
    assert tenant_b.status == Tenant.Status.ACTIVE


# --- audit log ------------------------------------------------------------------------------------------


def test_admin_change_is_written_to_the_audit_log(owner_a, user_a, tenant_a) -> None:
    # given tenant A's owner
    client = admin_client(owner_a)

    # when they change a user's display name through the change form
    response = client.post(change_url(user_a), user_change_post(user_a, display_name="Alice A."))

    # then the change is saved and audited in tenant A, naming the actor
    assert response.status_code == 302, form_errors(response)
    user_a.refresh_from_db()
    assert user_a.display_name == "Alice A."
    entry = AuditLogEntry.objects.get(action="admin.change")
    assert entry.tenant_id == tenant_a.pk
    assert entry.actor_id == owner_a.pk
    assert entry.actor_repr == "owner@tenant-a.example"
    assert entry.object_type == "tenants.User"
    assert entry.object_id == str(user_a.pk)
    assert "Display name" in entry.changes["message"][0]["changed"]["fields"]


def test_changing_a_user_in_the_admin_keeps_their_password(owner_a, user_a) -> None:
    # given tenant A's owner and a user who signs in with DEFAULT_PASSWORD
    client = admin_client(owner_a)

    # when the owner changes only the display name, leaving "Password" empty as its help text says
    response = client.post(change_url(user_a), user_change_post(user_a, display_name="Alice A."))

    # then the password still works, and the audit entry records only the display name as changed
    assert response.status_code == 302, form_errors(response)
    user_a.refresh_from_db()
    assert user_a.check_password(DEFAULT_PASSWORD)
    entry = AuditLogEntry.objects.get(action="admin.change")
    assert entry.changes == {"message": [{"changed": {"fields": ["Display name"]}}]}


def test_admin_add_is_written_to_the_audit_log_without_the_password(admin_a, tenant_a) -> None:
    # given tenant A's admin
    client = admin_client(admin_a)

    # when they add a user
    response = client.post(USER_ADD, {"email": "carol@example.com", "display_name": "", "new_password": NEW_PASSWORD,
                                      "is_active": "on", "_save": "Save"})

    # then an admin.add entry is written in tenant A with no password in it
    assert response.status_code == 302, form_errors(response)
    entry = AuditLogEntry.objects.get(action="admin.add")
    assert (entry.tenant_id, entry.actor_id, entry.object_type) == (tenant_a.pk, admin_a.pk, "tenants.User")
    assert "password" not in entry.changes["fields"]
    assert NEW_PASSWORD not in str(entry.changes)


def test_tenant_owner_reads_only_their_tenants_audit_log(owner_a, user_a, tenant_a, owner_b, tenant_b) -> None:
    # given audit entries in both tenants (tenant/staff creation) and an admin change in tenant A
    admin_client(owner_a).post(change_url(user_a), user_change_post(user_a, display_name="Alice A."))
    assert AuditLogEntry.objects.filter(tenant=tenant_b).exists()
    client = admin_client(owner_a)

    # when tenant A's owner opens the audit log
    response = client.get(AUDIT_CHANGELIST)

    # then exactly tenant A's entries are listed, and no filter offers tenant B
    assert response.status_code == 200
    assert changelist_pks(response) == {str(pk) for pk in AuditLogEntry.objects.filter(tenant=tenant_a)
                                        .values_list("pk", flat=True)}
    assert filter_titles(response) == ["action"]
    page = html(response)
    assert "admin.change" in page
    assert "owner@tenant-b.example" not in page
    assert "tenant-b" not in page


def test_tenant_owner_cannot_open_another_tenants_audit_entry(owner_a, owner_b, tenant_b) -> None:
    # given an audit entry of tenant B
    entry_b = AuditLogEntry.objects.filter(tenant=tenant_b).first()
    client = admin_client(owner_a)

    # when tenant A's owner opens it by id
    response = client.get(change_url(entry_b))

    # then the admin behaves as if it did not exist
    assert_not_opened(response, secret="owner@tenant-b.example")


def test_tenant_admin_role_cannot_read_the_audit_log(admin_a) -> None:
    # given an admin-role (not owner) member of tenant A
    client = admin_client(admin_a)

    # when they open the audit log
    response = client.get(AUDIT_CHANGELIST)

    # then it is forbidden
    assert response.status_code == 403


# --- login and suspension -------------------------------------------------------------------------------


def login(client: Client, *, tenant: str, username: str, password: str) -> HttpResponse:
    return client.post("/admin/login/?next=/admin/", {"tenant": tenant, "username": username,
                                                      "password": password, "next": "/admin/"})


def test_tenant_staff_logs_in_with_tenant_slug_and_email(admin_a) -> None:
    # given tenant A's admin and an anonymous browser
    client = Client()

    # when they sign in with the tenant slug, email and password
    response = login(client, tenant="tenant-a", username="admin@tenant-a.example", password=STAFF_PASSWORD)

    # then they are signed in as themselves and can open the admin
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.session["_auth_user_id"] == str(admin_a.pk)
    assert client.get("/admin/").status_code == 200


def test_admin_login_slug_is_case_insensitive(admin_a) -> None:
    # given tenant A's admin
    client = Client()

    # when they type the slug and email in another case
    response = login(client, tenant=" Tenant-A ", username="Admin@Tenant-A.example", password=STAFF_PASSWORD)

    # then they are signed in
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(admin_a.pk)


def test_admin_login_with_another_tenants_slug_fails(admin_a, tenant_b) -> None:
    # given tenant A's admin
    client = Client()

    # when they sign in with the right email and password but tenant B's slug
    response = login(client, tenant="tenant-b", username="admin@tenant-a.example", password=STAFF_PASSWORD)

    # then the login form is shown again with an error and nobody is signed in
    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    assert "_auth_user_id" not in client.session


def test_admin_login_without_a_slug_fails_for_tenant_staff(admin_a) -> None:
    # given tenant A's admin
    client = Client()

    # when they leave the organisation empty
    response = login(client, tenant="", username="admin@tenant-a.example", password=STAFF_PASSWORD)

    # then they are not signed in
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_admin_login_picks_the_account_of_the_named_tenant(tenant_a, tenant_b) -> None:
    # given the same email as staff in two tenants, with different passwords
    services.staff_create(tenant=tenant_a, email="sam@example.com", role="owner",
                          password="password-of-a-123")
    same_b, _ = services.staff_create(tenant=tenant_b, email="sam@example.com", role="owner",
                                      password="password-of-b-123")

    # when sam signs in to tenant B with B's password, and to tenant B with A's password
    client_b = Client()
    ok = login(client_b, tenant="tenant-b", username="sam@example.com", password="password-of-b-123")
    client_wrong = Client()
    wrong = login(client_wrong, tenant="tenant-b", username="sam@example.com", password="password-of-a-123")

    # then only the first signs in, as tenant B's account
    assert ok.status_code == 302
    assert client_b.session["_auth_user_id"] == str(same_b.pk)
    assert wrong.status_code == 200
    assert "_auth_user_id" not in client_wrong.session


def test_app_user_cannot_log_in_to_the_admin(user_a) -> None:
    # given a plain app user of tenant A (not staff)
    client = Client()

    # when they sign in to the admin with correct credentials
    response = login(client, tenant="tenant-a", username="alice@example.com", password=DEFAULT_PASSWORD)

    # then they are refused
    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    assert "_auth_user_id" not in client.session


def test_app_user_with_a_session_cannot_use_the_admin(user_a) -> None:
    # given a plain app user who somehow holds a session
    client = admin_client(user_a)

    # when they open the admin
    response = client.get(USER_CHANGELIST)

    # then they are sent to the login page
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_platform_operator_logs_in_without_a_tenant(superuser) -> None:
    # given a platform operator
    client = Client()

    # when they sign in with no organisation and their username
    response = login(client, tenant="", username="root", password="root-password-123")

    # then they are signed in
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(superuser.pk)


def test_staff_of_a_suspended_tenant_cannot_use_the_admin(owner_a, user_a, tenant_a) -> None:
    # given tenant A's owner with a session, and then tenant A suspended
    client = admin_client(owner_a)
    services.tenant_set_status(tenant=tenant_a, status=Tenant.Status.SUSPENDED)

    # when they open the admin, a changelist, and post a change
    index = client.get("/admin/")
    changelist = client.get(USER_CHANGELIST)
    change = client.post(change_url(user_a), user_change_post(user_a, display_name="changed"))

    # then every page sends them to the login page and nothing changed
    for response in (index, changelist, change):
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
    user_a.refresh_from_db()
    assert user_a.display_name == ""


def test_staff_of_a_suspended_tenant_cannot_log_in(owner_a, tenant_a) -> None:
    # given tenant A suspended
    services.tenant_set_status(tenant=tenant_a, status=Tenant.Status.SUSPENDED)
    client = Client()

    # when its owner signs in with correct credentials
    login(client, tenant="tenant-a", username="owner@tenant-a.example", password=STAFF_PASSWORD)

    # then the admin index is still closed to them
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", [USER_CHANGELIST, MEMBERSHIP_CHANGELIST, APPKEY_CHANGELIST, TENANT_CHANGELIST])
def test_staff_without_a_membership_cannot_use_the_admin(tenant_a, url: str) -> None:
    # given a user of tenant A flagged staff but with no membership (no role)
    user = UserFactory(tenant=tenant_a, email="stray@example.com")
    User.objects.filter(pk=user.pk).update(is_staff=True)
    client = admin_client(user)

    # when they open an admin page
    response = client.get(url)

    # then they are sent to the login page
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


# --- rows unique within a tenant (the staff form has no tenant field) --------------------------------------


def test_tenant_staff_get_a_form_error_not_a_500_for_a_second_row_unique_per_tenant(owner_a, tenant_a,
                                                                                     tenant_b) -> None:
    from wallet.balances.models import ProviderConfig
    from wallet.ledger.models import Asset, TenantAsset
    from wallet.ledger.services import assets_catalogue_ensure, tenant_asset_enable

    assets_catalogue_ensure()
    usd, eur = Asset.objects.get(code="USD"), Asset.objects.get(code="EUR")
    tenant_asset_enable(tenant=tenant_a, asset=usd)
    tenant_asset_enable(tenant=tenant_b, asset=eur)  # another tenant's row is no clash
    ProviderConfig.all_tenants.create(tenant=tenant_a, kind=ProviderConfig.Kind.PRICES,
                                      provider=ProviderConfig.Provider.SANDBOX)
    client = admin_client(owner_a)

    add_asset = "/admin/ledger/tenantasset/add/"
    again = client.post(add_asset, {"asset": usd.pk, "enabled": "on", "_save": "Save"})
    assert again.status_code == 200
    assert form_errors(again) == {"asset": ["This app has a row with this asset already: change that one instead."]}
    assert client.post(add_asset, {"asset": eur.pk, "enabled": "on", "_save": "Save"}).status_code == 302
    assert TenantAsset.all_tenants.filter(tenant=tenant_a).count() == 2
    own = TenantAsset.all_tenants.get(tenant=tenant_a, asset=usd)
    edited = client.post(f"/admin/ledger/tenantasset/{own.pk}/change/",
                         {"asset": usd.pk, "enabled": "on", "max_per_transfer": "500", "_save": "Save"})
    assert edited.status_code == 302  # its own row is no clash
    assert TenantAsset.all_tenants.get(pk=own.pk).max_per_transfer == 500

    second = client.post("/admin/balances/providerconfig/add/", {
        "kind": ProviderConfig.Kind.PRICES, "provider": ProviderConfig.Provider.SANDBOX, "options": "{}",
        "enabled": "on", "_save": "Save"})
    assert second.status_code == 200
    assert "has a row with this kind already" in str(form_errors(second))
    assert ProviderConfig.all_tenants.filter(tenant=tenant_a).count() == 1
