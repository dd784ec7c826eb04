"""Staff endpoints of branding (a tenant's owner or admin, signed in through the tenant's app key):
check and save the draft, publish it. Errors are problem+json; validation answers `422 branding_invalid`
with `errors: [{pointer, code, detail}]`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from branding import services
from branding.errors import BrandingInvalid
from branding.selectors import draft_get
from tenants.models import ROLE_RANK, Membership
from tenants.selectors import membership_for


class IsBrandingManager(BasePermission):
    """The signed-in user is an owner or admin of the request's tenant."""

    message = "Only the tenant's owners and admins manage its branding."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if user is None or not getattr(user, "is_authenticated", False):
            return False
        membership = membership_for(user=user)
        return (membership is not None and membership.tenant_id == request._request.tenant.pk
                and ROLE_RANK[Membership.Role(membership.role)] >= ROLE_RANK[Membership.Role.ADMIN])


class ProblemSerializer(serializers.Serializer):
    pointer = serializers.CharField()
    code = serializers.CharField()
    detail = serializers.CharField()


class DraftOutputSerializer(serializers.Serializer):
    content = serializers.JSONField()
    updated_at = serializers.DateTimeField()
    problems = ProblemSerializer(many=True)


class DraftInputSerializer(serializers.Serializer):
    content = serializers.JSONField()

    def validate_content(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("The draft is a JSON object.")
        return value


def _draft_body(tenant: Any) -> dict[str, Any]:
    draft = draft_get(tenant=tenant)
    content = draft.content if draft is not None else {}
    problems = services.branding_draft_check(tenant=tenant, content=content)
    return {"content": content, "updated_at": draft.updated_at if draft is not None else None,
            "problems": [p.as_dict() for p in problems]}


class DraftApi(APIView):
    """`GET` the draft with its current problems; `PUT` replaces it (an incomplete draft is saved, and its
    problems are listed)."""

    permission_classes = [IsBrandingManager]

    @extend_schema(responses={200: DraftOutputSerializer}, operation_id="branding_draft_get")
    def get(self, request: Request) -> Response:
        return Response(DraftOutputSerializer(_draft_body(request._request.tenant)).data)

    @extend_schema(request=DraftInputSerializer, responses={200: DraftOutputSerializer},
                   operation_id="branding_draft_put")
    def put(self, request: Request) -> Response:
        data = DraftInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = request._request.tenant
        services.branding_draft_update(tenant=tenant, content=data.validated_data["content"], actor=request.user)
        return Response(DraftOutputSerializer(_draft_body(tenant)).data)


class DraftCheckApi(APIView):
    """Validate a document without saving it: 204 when it could be published, else 422 with a pointer per
    problem."""

    permission_classes = [IsBrandingManager]

    @extend_schema(request=DraftInputSerializer, responses={204: None}, operation_id="branding_draft_check")
    def post(self, request: Request) -> Response:
        data = DraftInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        problems = services.branding_draft_check(tenant=request._request.tenant,
                                                 content=data.validated_data["content"])
        if problems:
            raise BrandingInvalid(problems)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ReleaseOutputSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    content_hash = serializers.CharField()
    etag = serializers.CharField()
    published_at = serializers.DateTimeField()


class ReleasePublishApi(APIView):
    """Publish the draft as the next release: 201, or 422 `branding_invalid`, or 409 `branding_unchanged`."""

    permission_classes = [IsBrandingManager]

    @extend_schema(request=None, responses={201: ReleaseOutputSerializer}, operation_id="branding_release_publish")
    def post(self, request: Request) -> Response:
        release = services.branding_release_publish(tenant=request._request.tenant, actor=request.user)
        return Response(ReleaseOutputSerializer(release).data, status=status.HTTP_201_CREATED)
