"""Routers, one per resource."""

__all__: list[str] = []
