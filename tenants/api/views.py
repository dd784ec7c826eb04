"""App authentication and profile endpoints. One view per operation; services do the work."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import services
from tenants.auth import sessions
from tenants.auth.throttle import login_throttle
from tenants.errors import InvalidCredentials
from tenants.models import User
from wallet.core.jsonutil import dumps


class TokenPairSerializer(serializers.Serializer):
    token_type = serializers.CharField()
    access = serializers.CharField()
    expires_in = serializers.IntegerField()
    refresh = serializers.CharField()
    refresh_expires_in = serializers.IntegerField()


class UserOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    email = serializers.EmailField()
    display_name = serializers.CharField()
    handle = serializers.CharField(allow_null=True)
    tenant = serializers.CharField(source="tenant.slug")
    date_joined = serializers.DateTimeField()


def _user_agent(request: Request) -> str:
    return request.META.get("HTTP_USER_AGENT", "")


class RegisterApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class RegisterInputSerializer(serializers.Serializer):
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(max_length=512, trim_whitespace=False)
        display_name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
        handle = serializers.RegexField(r"^[A-Za-z0-9_]{3,30}$", required=False, allow_null=True, default=None)

    @extend_schema(request=RegisterInputSerializer, responses={201: UserOutputSerializer}, operation_id="auth_register")
    def post(self, request: Request) -> Response:
        data = self.RegisterInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_register(tenant=request._request.tenant, **data.validated_data)
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


class TokenObtainApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class TokenObtainInputSerializer(serializers.Serializer):
        email = serializers.CharField(max_length=254)
        password = serializers.CharField(max_length=512, trim_whitespace=False)

    @extend_schema(request=TokenObtainInputSerializer, responses={200: TokenPairSerializer}, operation_id="auth_token")
    def post(self, request: Request) -> Response:
        data = self.TokenObtainInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = request._request.tenant
        email, password = data.validated_data["email"], data.validated_data["password"]
        login_throttle(request=request._request, tenant=tenant, email=email)
        from django.contrib.auth import authenticate

        user = authenticate(request._request, tenant=tenant, email=email, password=password)
        if user is None:
            raise InvalidCredentials()
        pair = sessions.session_start(user=user, user_agent=_user_agent(request))
        return Response(pair.as_response())


class TokenRefreshApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class TokenRefreshInputSerializer(serializers.Serializer):
        refresh = serializers.CharField(max_length=200)

    @extend_schema(request=TokenRefreshInputSerializer, responses={200: TokenPairSerializer},
                   operation_id="auth_token_refresh")
    def post(self, request: Request) -> Response:
        data = self.TokenRefreshInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pair = sessions.session_refresh(tenant=request._request.tenant,
                                        refresh_token=data.validated_data["refresh"])
        return Response(pair.as_response())


class LogoutApi(APIView):
    """End a session: by its refresh token in the body, or the session of the bearer access token."""

    permission_classes = [AllowAny]

    class LogoutInputSerializer(serializers.Serializer):
        refresh = serializers.CharField(max_length=200, required=False)

    @extend_schema(request=LogoutInputSerializer, responses={204: None}, operation_id="auth_logout")
    def post(self, request: Request) -> Response:
        data = self.LogoutInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = request._request.tenant
        refresh = data.validated_data.get("refresh")
        if refresh:
            sessions.session_revoke_by_refresh(tenant=tenant, refresh_token=refresh)
        elif request.user is not None:
            sessions.session_revoke(tenant=tenant, session_id=request.auth["sid"])
        else:
            from wallet.core.errors import NotAuthenticated

            raise NotAuthenticated("Send a refresh token or an access token.")
        return Response(status=status.HTTP_204_NO_CONTENT)


def user_output(user: User) -> dict[str, object]:
    """`UserOutputSerializer`'s fields, built directly: this runs on the app's most frequent call, and a
    DRF serializer costs more than the rest of the request (tests/test_auth_flows.py pins the equality)."""
    return {
        "id": str(user.pk), "email": user.email, "display_name": user.display_name, "handle": user.handle,
        "tenant": user.tenant.slug, "date_joined": user.date_joined.isoformat().replace("+00:00", "Z"),
    }


class MeApi(APIView):
    @extend_schema(responses={200: UserOutputSerializer}, operation_id="me_get")
    def get(self, request: Request) -> HttpResponse:
        # A plain response with pre-encoded JSON skips DRF's template-response machinery (same bytes).
        return HttpResponse(dumps(user_output(request.user)), content_type="application/json")


class PasswordChangeApi(APIView):
    class PasswordChangeInputSerializer(serializers.Serializer):
        current_password = serializers.CharField(max_length=512, trim_whitespace=False)
        new_password = serializers.CharField(max_length=512, trim_whitespace=False)

    @extend_schema(request=PasswordChangeInputSerializer, responses={200: TokenPairSerializer},
                   operation_id="me_password_change")
    def post(self, request: Request) -> Response:
        data = self.PasswordChangeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pair = services.user_change_password(user=request.user, user_agent=_user_agent(request),
                                             **data.validated_data)
        return Response(pair.as_response())
