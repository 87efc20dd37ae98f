"""The online service: app builder, thin Serve deployments, ingress, admission, cache, UI."""
