"""Settings modules: `development` (the default, embedded) and `production`; both build on `base`."""
