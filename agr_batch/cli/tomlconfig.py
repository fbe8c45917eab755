"""``scan --config FILE.toml``: option defaults from a TOML file, each checked by its type.

Keys are option names as typed on the command line, with or without dashes (``sample-fps``
or ``sample_fps``), at the top level or under ``[scan]``. Every value is checked against its
option's type when the file is read, so a list where a number belongs is one line naming the
file and the key (exit 2) rather than a traceback later; ranges are checked where the
configuration is built, as for the command line.
"""

from __future__ import annotations

import tomllib
from typing import Any

import click

from agr_batch.stages.decode.media import open_regular


class ConfigFileError(ValueError):
    """A config file that cannot be read or holds a bad key or value (one line)."""


def load_defaults(path: str, ctx: click.Context) -> dict[str, Any]:
    """The option defaults in ``path`` for ``ctx``'s command, by parameter name.

    Raises:
        ConfigFileError: Unreadable file (or not a regular file), bad TOML, unknown key or a
            value of the wrong type.
    """
    try:
        with open_regular(path) as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigFileError(f"--config {path}: {getattr(e, 'strerror', None) or e}") from None
    data = data.get("scan", data)
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: [scan] must be a table of options")
    params: dict[str, click.Parameter] = {}
    for p in ctx.command.params:
        if p.name is None or p.name == "config_file":
            continue
        params[p.name] = p
        for opt in getattr(p, "opts", []):
            params[opt.lstrip("-").replace("-", "_")] = p
    defaults: dict[str, Any] = {}
    for key, val in data.items():
        param = params.get(key.replace("-", "_"))
        if param is None:
            raise ConfigFileError(f"--config {path}: unknown option {key!r}")
        assert param.name is not None
        defaults[param.name] = _convert(path, key, param, val, ctx)
    return defaults


def _convert(file: str, key: str, param: click.Parameter, val: Any, ctx: click.Context) -> Any:
    """``val`` converted to ``param``'s type.

    Raises:
        ConfigFileError: Naming the key, the type expected and the value.
    """
    flag = isinstance(param, click.Option) and param.is_flag and not param.count
    counted = isinstance(param, click.Option) and param.count
    if flag:
        expected = "true or false"
    elif isinstance(param.type, click.Choice):
        expected = "one of " + ", ".join(map(str, param.type.choices))
    else:
        name = param.type.name
        expected = "a whole number" if counted else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    # TOML booleans, arrays and tables never stand for a number, a path or a choice.
    ok_shape = isinstance(val, bool) if flag else not isinstance(val, bool | list | dict)
    if isinstance(param.type, click.types.IntParamType) and isinstance(val, float):
        ok_shape = False  # click would truncate 2.5 to 2
    if ok_shape:
        try:
            return val if flag else param.type.convert(val, param, ctx)
        except click.BadParameter:
            pass
    raise ConfigFileError(f"--config {file}: {key} must be {expected}, got {val!r}")
