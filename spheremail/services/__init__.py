"""Workflows that touch several models. The caller commits."""
