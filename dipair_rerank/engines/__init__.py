"""Distributed engines for index builds (optional extras)."""
