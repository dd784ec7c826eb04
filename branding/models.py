"""Models of the branding app."""
