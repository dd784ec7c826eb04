"""Project-wide infrastructure that every app may import: errors, ids, request context, logging,
pagination and health checks. It imports no app of ours (see docs/ARCHITECTURE.md)."""
