"""Thin Ray Serve deployments around the plain stage classes."""
