"""Model-registry URIs, and what of a secret a URI may carry, masked."""

from __future__ import annotations

import re

REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``;
    None for any other URI."""
    match = REGISTRY_URI.match(uri)
    return (match["name"], match["alias"], match["version"]) if match else None


URI_USERINFO = re.compile(r"(?<=://)[^/\s]*@")  # up to the last @ before the path: a password may hold one


SECRET_QUERY = re.compile(r"([?&][^=&\s]*(?:token|sig|signature|password|secret|key)[^=&\s]*=)[^&\s]+", re.I)


def redact(text: str) -> str:
    """``text`` with what a URI may carry of a secret masked: its user and password
    (``https://user:pass@host``) and token-like query values (``?sig=...``). For what the
    pipeline writes where people read it: tags, the report, the model card."""
    return SECRET_QUERY.sub(r"\1***", URI_USERINFO.sub("***@", text))
