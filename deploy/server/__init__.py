"""The shared tracking server: ``python -m deploy.server`` starts it, ``python -m deploy.server.auth``
manages its users."""
