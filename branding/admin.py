"""Branding in the tenant-scoped admin: edit the draft (JSON document and uploads), preview it as phone
mocks in light and dark with contrast problems inline, publish it, compare two releases, manage build
tokens and the build hook. Every write goes through `branding.services`."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from branding import services
from branding.errors import BrandingInvalid, BrandingUnchanged
from branding.models import BrandingAsset, BrandingDraft, BrandingRelease, BuildHook, BuildToken, HookDelivery
from branding.preview import draft_problems, preview_context, release_diff
from branding.selectors import asset_loader
from branding.validation import check_upload
from tenants.admin_scoping import MANAGERS, TenantScopedAdmin, role_at_least
from tenants.models import Membership, Tenant

NOBODY: frozenset[str] = frozenset()
IMAGE_USAGES = ("app_icon", "adaptive_foreground", "adaptive_monochrome", "logo", "splash_image")


def _tenant_of(request: HttpRequest, obj: Any) -> Tenant:
    if obj is not None and getattr(obj, "tenant_id", None):
        return Tenant.objects.get(pk=obj.tenant_id)
    return request.user.tenant


class DraftForm(forms.ModelForm):
    content = forms.JSONField(required=False, widget=forms.Textarea(attrs={
        "rows": 32, "cols": 110, "style": "font-family: monospace; font-size: 12px"}),
        help_text="The branding document (see branding/schemas/brand.schema.json). Uploads below fill in "
                  "their SHA-256 references.")
    app_icon_file = forms.FileField(required=False, label="App icon", help_text="PNG, 1024x1024, no alpha")
    adaptive_foreground_file = forms.FileField(required=False, label="Adaptive icon foreground",
                                               help_text="PNG with alpha, square, 432-1024 px")
    adaptive_monochrome_file = forms.FileField(required=False, label="Adaptive icon monochrome",
                                               help_text="PNG with alpha, square, 432-1024 px")
    logo_file = forms.FileField(required=False, label="Logo", help_text="SVG (no scripts or external "
                                "references) or PNG")
    splash_image_file = forms.FileField(required=False, label="Splash image", help_text="PNG")
    font_file = forms.FileField(required=False, label="Font file", help_text="TTF or OTF")
    font_family = forms.CharField(required=False, max_length=63)
    font_weight = forms.IntegerField(required=False, min_value=100, max_value=900, initial=400)
    font_style = forms.ChoiceField(required=False, choices=[("normal", "normal"), ("italic", "italic")])

    class Meta:
        model = BrandingDraft
        fields = ("tenant", "content")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        self.uploads: dict[str, bytes] = {}
        for usage in (*IMAGE_USAGES, "font"):
            upload = cleaned.get(f"{usage}_file")
            if not upload:
                continue
            data = upload.read()
            problems = check_upload(usage, data).problems
            for problem in problems:
                self.add_error(f"{usage}_file", f"{problem.code}: {problem.detail}")
            if not problems:
                self.uploads[usage] = data
        if "font" in self.uploads and not cleaned.get("font_family"):
            self.add_error("font_family", "Name the family of the uploaded font.")
        content = cleaned.get("content")
        if content is not None and not isinstance(content, dict):
            self.add_error("content", "The document is a JSON object.")
        return cleaned


@admin.register(BrandingDraft)
class BrandingDraftAdmin(TenantScopedAdmin):
    form = DraftForm
    list_display = ("__str__", "tenant", "updated_at", "preview_link")
    readonly_fields = ("problems",)
    delete_roles = NOBODY
    actions = ["publish_drafts"]
    change_form_template = "branding/draft_change_form.html"

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = ["tenant", "problems", "content", "app_icon_file", "adaptive_foreground_file",
                  "adaptive_monochrome_file", "logo_file", "splash_image_file", "font_file", "font_family",
                  "font_weight", "font_style"]
        return [f for f in fields if request.user.is_superuser or f not in self.superuser_only_fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        if not super().has_add_permission(request):
            return False
        # one draft per tenant: staff add theirs once; a superuser picks the tenant
        return request.user.is_superuser or not BrandingDraft.all_tenants.filter(
            tenant_id=request.user.tenant_id).exists()

    @admin.display(description="Problems (validation as on publish)")
    def problems(self, obj: BrandingDraft) -> str:
        if obj is None or obj.pk is None:
            return "-"
        tenant = Tenant.objects.get(pk=obj.tenant_id)
        found = draft_problems(obj.content, asset_loader(tenant=tenant))
        if not found:
            return "None: ready to publish."
        items = format_html_join("", "<li><code>{}</code> {}: {}</li>", ((p.pointer, p.code, p.detail) for p in found))
        return format_html("<ul class='errorlist'>{}</ul>", items)

    @admin.display(description="Preview")
    def preview_link(self, obj: BrandingDraft) -> str:
        return format_html('<a href="{}">Preview</a>', reverse("admin:branding_brandingdraft_preview", args=[obj.pk]))

    def save_model(self, request: HttpRequest, obj: BrandingDraft, form: DraftForm, change: bool) -> None:
        tenant = Tenant.objects.get(pk=obj.tenant_id) if request.user.is_superuser else request.user.tenant
        content = dict(form.cleaned_data.get("content") or {})
        for usage, data in form.uploads.items():
            asset = services.branding_asset_upload(tenant=tenant, usage=usage, data=data,
                                                   filename=form.cleaned_data[f"{usage}_file"].name)
            if usage == "font":
                typography = dict(content.get("typography") or {})
                faces = [f for f in typography.get("faces", []) if isinstance(f, dict)]
                face = {"family": form.cleaned_data["font_family"], "weight": form.cleaned_data["font_weight"] or 400,
                        "style": form.cleaned_data["font_style"] or "normal", "asset": asset.sha256}
                faces = [f for f in faces if (f.get("family"), f.get("weight"), f.get("style"))
                         != (face["family"], face["weight"], face["style"])] + [face]
                typography["faces"] = faces
                content["typography"] = typography
            else:
                content["images"] = {**(content.get("images") or {}), usage: asset.sha256}
        draft = services.branding_draft_update(tenant=tenant, content=content, actor=request.user)
        obj.pk, obj.content, obj.tenant_id = draft.pk, draft.content, draft.tenant_id
        obj._state.adding = False

    def get_urls(self) -> list[Any]:
        urls = [
            path("<uuid:object_id>/preview/", self.admin_site.admin_view(self.preview_view),
                 name="branding_brandingdraft_preview"),
            path("<uuid:object_id>/publish/", self.admin_site.admin_view(self.publish_view),
                 name="branding_brandingdraft_publish"),
        ]
        return urls + super().get_urls()

    def _draft(self, request: HttpRequest, object_id: Any) -> BrandingDraft:
        draft = self.get_object(request, str(object_id))  # the scoped queryset: another tenant's is None
        if draft is None or not self.has_view_permission(request, draft):
            raise Http404("No such draft")
        return draft

    def preview_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        draft = self._draft(request, object_id)
        tenant = Tenant.objects.get(pk=draft.tenant_id)
        loader = asset_loader(tenant=tenant)
        logo_sha = ((draft.content.get("images") or {}).get("logo") if isinstance(draft.content, dict) else None)
        logo = loader(logo_sha) if isinstance(logo_sha, str) and len(logo_sha) == 64 else None
        context = preview_context(draft.content, draft_problems(draft.content, loader), logo)
        return TemplateResponse(request, "branding/preview.html", {
            **self.admin_site.each_context(request), **context, "title": f"Preview: {context['display_name']}",
            "opts": self.model._meta, "draft": draft,
            "can_publish": self._role_allows(request, MANAGERS),
        })

    def publish_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        draft = self._draft(request, object_id)
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:branding_brandingdraft_preview", args=[draft.pk]))
        if not self._role_allows(request, MANAGERS):
            raise PermissionDenied
        self._publish(request, draft)
        return HttpResponseRedirect(reverse("admin:branding_brandingrelease_changelist"))

    def _publish(self, request: HttpRequest, draft: BrandingDraft) -> None:
        tenant = Tenant.objects.get(pk=draft.tenant_id)
        try:
            release = services.branding_release_publish(tenant=tenant, actor=request.user)
        except BrandingInvalid as error:
            self.message_user(request, f"Not published: {len(error.problems)} problem(s), e.g. "
                              f"{error.problems[0].pointer} {error.problems[0].code}", messages.ERROR)
            return
        except BrandingUnchanged as error:
            self.message_user(request, f"Not published: {error.detail}", messages.WARNING)
            return
        self._audit(request, release, "admin.action.publish", {"number": release.number,
                                                               "content_hash": release.content_hash})
        self.message_user(request, f"Published release {release.number}.", messages.SUCCESS)

    @admin.action(description="Publish the selected draft as a new release")
    def publish_drafts(self, request: HttpRequest, queryset: QuerySet[BrandingDraft]) -> None:
        if not self._role_allows(request, MANAGERS):
            raise PermissionDenied
        for draft in queryset:
            self._publish(request, draft)


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BrandingRelease)
class BrandingReleaseAdmin(ReadOnlyMixin, TenantScopedAdmin):
    list_display = ("number", "tenant", "content_hash", "published_by_repr", "published_at")
    list_filter = ("tenant",)
    fields = ("tenant", "number", "content_hash", "published_by_repr", "published_at", "pretty_content")
    readonly_fields = fields
    actions = ["compare"]

    @admin.display(description="Content")
    def pretty_content(self, obj: BrandingRelease) -> str:
        return format_html("<pre style='max-height: 40em; overflow: auto'>{}</pre>",
                           json.dumps(obj.content, indent=2, sort_keys=True))

    def get_urls(self) -> list[Any]:
        return [path("diff/", self.admin_site.admin_view(self.diff_view), name="branding_brandingrelease_diff"),
                *super().get_urls()]

    @admin.action(description="Compare the two selected releases")
    def compare(self, request: HttpRequest, queryset: QuerySet[BrandingRelease]) -> HttpResponse | None:
        chosen = list(queryset.order_by("tenant_id", "number")[:3])
        if len(chosen) != 2 or chosen[0].tenant_id != chosen[1].tenant_id:
            self.message_user(request, "Select exactly two releases of one tenant.", messages.WARNING)
            return None
        url = reverse("admin:branding_brandingrelease_diff")
        return HttpResponseRedirect(f"{url}?a={chosen[0].pk}&b={chosen[1].pk}")

    def diff_view(self, request: HttpRequest) -> HttpResponse:
        queryset = self.get_queryset(request)
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            old = queryset.get(pk=request.GET.get("a"))
            new = queryset.get(pk=request.GET.get("b"))
        except (BrandingRelease.DoesNotExist, ValueError, ValidationError) as exc:
            raise Http404("No such releases") from exc
        if old.tenant_id != new.tenant_id:
            raise Http404("Releases of two tenants")
        return TemplateResponse(request, "branding/release_diff.html", {
            **self.admin_site.each_context(request), "title": f"Release {old.number} → {new.number}",
            "opts": self.model._meta, "old": old, "new": new, "rows": release_diff(old.content, new.content),
        })


class BuildTokenForm(forms.ModelForm):
    class Meta:
        model = BuildToken
        fields = ("tenant", "label")


@admin.register(BuildToken)
class BuildTokenAdmin(TenantScopedAdmin):
    form = BuildTokenForm
    list_display = ("prefix", "label", "tenant", "created_at", "last_used_at", "revoked_at")
    list_filter = ("tenant",)
    readonly_fields = ("prefix", "created_at", "created_by_repr", "last_used_at", "revoked_at")
    actions = ["revoke"]
    delete_roles = NOBODY

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: BuildToken, form: Any, change: bool) -> None:
        tenant = Tenant.objects.get(pk=obj.tenant_id) if request.user.is_superuser else request.user.tenant
        token, raw = services.build_token_create(tenant=tenant, label=obj.label, actor_repr=request.user.email)
        obj.pk, obj.tenant_id, obj.prefix = token.pk, token.tenant_id, token.prefix
        obj._state.adding = False
        self.message_user(request, f"New build token (copy it now, it is not shown again): {raw}", messages.WARNING)

    @admin.action(description="Revoke the selected build tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[BuildToken]) -> None:
        if not self._role_allows(request, MANAGERS):
            raise PermissionDenied
        for token in queryset:
            services.build_token_revoke(tenant=Tenant.objects.get(pk=token.tenant_id), token=token)
            self._audit(request, token, "admin.action.revoke", {"prefix": token.prefix})
        self.message_user(request, "Revoked.", messages.SUCCESS)


class BuildHookForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")

    class Meta:
        model = BuildHook
        fields = ("tenant", "url", "enabled")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        for problem in services.hook_url_problems(url):
            raise forms.ValidationError(f"{problem.code}: {problem.detail}")
        return url


@admin.register(BuildHook)
class BuildHookAdmin(TenantScopedAdmin):
    form = BuildHookForm
    list_display = ("url", "tenant", "enabled", "created_at")
    readonly_fields = ("secret",)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """The signing secret is shown to the tenant's managers only (support and viewers can forge
        nothing with what they read here)."""
        fields = list(super().get_fields(request, obj))
        if not (request.user.is_superuser or role_at_least(request, Membership.Role.ADMIN)):
            fields = [name for name in fields if name != "secret"]
        return fields

    def save_model(self, request: HttpRequest, obj: BuildHook, form: Any, change: bool) -> None:
        tenant = Tenant.objects.get(pk=obj.tenant_id) if request.user.is_superuser else request.user.tenant
        hook = services.build_hook_set(tenant=tenant, url=obj.url, enabled=obj.enabled)
        obj.pk, obj.tenant_id, obj.secret = hook.pk, hook.tenant_id, hook.secret
        obj._state.adding = False


@admin.register(HookDelivery)
class HookDeliveryAdmin(ReadOnlyMixin, TenantScopedAdmin):
    list_display = ("release", "url", "status", "attempts", "response_status", "last_error", "created_at", "tenant")
    list_filter = ("tenant", "status")


@admin.register(BrandingAsset)
class BrandingAssetAdmin(ReadOnlyMixin, TenantScopedAdmin):
    list_display = ("sha256", "usage", "media_type", "size", "width", "height", "original_name", "tenant",
                    "created_at")
    list_filter = ("tenant", "usage")
    exclude = ("file",)

