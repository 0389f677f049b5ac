"""ASGI middleware in front of every route: auth, request limits, browser security."""
