"""The config file `mailnode init` writes: the annotated reference with this installation's values."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources

# src/mailnode/reference.toml is a symlink to etc/mailnode.toml, the one annotated reference:
# editable installs read it through the link, and a built wheel holds a copy of its content.
REFERENCE_RESOURCE = "reference.toml"
_TABLE = re.compile(r"^\[([A-Za-z0-9_.\"-]+)\]\s*(?:#.*)?$")


def reference_config() -> str:
    """The text of the annotated reference config (etc/mailnode.toml) shipped with the package."""
    return resources.files("mailnode").joinpath(REFERENCE_RESOURCE).read_text(encoding="utf-8")


def toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes (\\", \\\\, \\uXXXX) are all valid TOML."""
    return json.dumps(value)


def set_values(reference: str, values: Mapping[tuple[str, str], str]) -> str:
    """Replace `key = ...` lines of the given (table, key) pairs, keeping every comment.

    Each pair must occur exactly once as an uncommented line of its table: if the reference
    changes shape, this fails loudly rather than writing a config without the secret.
    """
    lines = reference.splitlines(keepends=True)
    found: dict[tuple[str, str], int] = {}
    table = ""
    for index, line in enumerate(lines):
        header = _TABLE.match(line)
        if header:
            table = header.group(1)
            continue
        name = line.split("=", 1)[0].strip()
        if (table, name) in values and "=" in line:
            if (table, name) in found:
                raise ValueError(f"{table}.{name} occurs twice in the reference config")
            found[(table, name)] = index
            lines[index] = f"{name} = {toml_string(values[(table, name)])}\n"
    missing = sorted(f"{t}.{k}" for t, k in values.keys() - found.keys())
    if missing:
        raise ValueError(f"the reference config has no line for {', '.join(missing)}")
    return "".join(lines)


def initial_config(
    reference: str, *, storage_url: str, admin_token: str, cert_file: str, key_file: str
) -> str:
    """The reference config with its storage URL, admin token and TLS files filled in.

    With an empty `admin_token` the token lives elsewhere (an environment file) and the config
    holds no secret.
    """
    values = {
        ("storage", "url"): storage_url,
        ("admin", "token"): admin_token,
        ("tls", "cert_file"): cert_file,
        ("tls", "key_file"): key_file,
    }
    header = (
        "# Written by `mailnode init`. It holds the admin token: keep it private (mode 0600),\n"
        "# or move the token to a file and point [admin] token_file at it.\n\n"
        if admin_token
        else "# Written by `mailnode init`. It holds no secret: the admin token is in the environment\n"
        "# file init wrote beside it (MAILNODE_ADMIN_TOKEN=…, mode 0600; systemd reads it as root).\n\n"
    )
    return header + set_values(reference, values)
