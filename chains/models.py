"""Models of the chains app."""
