"""Error codes of tenancy and authentication (stable: the app branches on them)."""

from wallet.core.errors import error_class

AppKeyMissing = error_class("app_key_missing", 401, "The X-App-Key header is required")
InvalidAppKey = error_class("invalid_app_key", 401, "The app key is unknown or revoked")
TenantSuspended = error_class("tenant_suspended", 403, "This tenant is suspended")
InvalidCredentials = error_class("invalid_credentials", 401, "Email or password is incorrect")
TooManyAttempts = error_class("too_many_attempts", 429, "Too many sign-in attempts; try again later")
TokenInvalid = error_class("token_invalid", 401, "The token is invalid")
TokenExpired = error_class("token_expired", 401, "The token has expired")
TokenTenantMismatch = error_class("token_tenant_mismatch", 401, "The token belongs to another tenant")
TokenRevoked = error_class("token_revoked", 401, "The token has been revoked")
RefreshTokenReused = error_class(
    "refresh_token_reused", 401, "The refresh token was already used; its whole session is revoked"
)
EmailTaken = error_class("email_taken", 409, "An account with this email already exists")
HandleTaken = error_class("handle_taken", 409, "This handle is already taken")
PasswordTooWeak = error_class("password_too_weak", 400, "The password is too weak")
WrongPassword = error_class("wrong_password", 400, "The current password is incorrect")
