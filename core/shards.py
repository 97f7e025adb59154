"""Several instances behind one nginx: which instance owns each URL (``flask --app app shards nginx-map``).

Accounts are independent, so an integrator splits them across instances (each its own config, data
directory and machine, if need be) and one nginx in front routes each request to the instance that
owns it (``deploy/nginx-shards.conf``, README "Past one machine"). nginx turns the URL into a route
key (``feed:<name>``, ``images:<account>``, ``webhook:<secret>``, ``exchange:``, ``instance:<name>``)
and looks it up in the map printed here from the instances' configs. An instance reached under
``/_shard/<name>/`` (its ``public_url`` ending so) serves its main account's pictures and exchange
there; one instance may serve them unprefixed.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import click

from core.settings import NAME_PATTERN, ConfigError, Settings, load_settings

SHARD_PREFIX = "/_shard/"


def shard_routes(instances: dict[str, Settings]) -> dict[str, str]:
    """Route key → instance name for every URL an instance owns; a URL two instances claim is a ConfigError."""
    routes: dict[str, str] = {}

    def claim(key: str, name: str, what: str, advice: str) -> None:
        owner = routes.setdefault(key, name)
        if owner != name:
            raise ConfigError(f"{what} is in both instance {owner} and instance {name}: {advice}")

    for name, settings in instances.items():
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"instance name {name!r}: lowercase letters, digits, '-' or '_' (it names an nginx upstream)")
        claim(f"instance:{name}", name, f"the name {name}", "name each instance once")
        if settings.accel_redirect:  # the front nginx cannot read this instance's disk: every feed would be a 404
            raise ConfigError(f"instance {name}: accel_redirect ({settings.accel_redirect}) hands a feed to the nginx in "
                              "front of the app, which for a shard is the front nginx without this instance's files: "
                              "leave accel_redirect unset on instances behind nginx-shards.conf")
        prefixed = urlsplit(settings.public_url).path.rstrip("/") == SHARD_PREFIX + name
        move = (f"set public_url of all but one of them to https://<host>{SHARD_PREFIX}<instance> "
                "(its pictures and its 1C exchange address are then under that prefix)")
        for view in settings.every_account():
            for feed in view.feeds:
                claim(f"feed:{feed.name}", name, f"feed {feed.name}", "a feed (its URL) belongs to one instance")
            if view.account:
                claim(f"images:{view.account}", name, f"account {view.account}", "an account belongs to one instance")
            elif view.feeds and not prefixed:
                claim("images:", name, "a main account with feeds (pictures at /images/<file>)", move)
            if view.webhooks.secret:
                claim(f"webhook:{view.webhooks.secret}", name, f"the webhook secret of account {view.account or 'main'}",
                      "give each account a secret of its own")
        if settings.exchange.password and not prefixed:
            claim("exchange:", name, "the exchange address /exchange/1c", move)
    return routes


def nginx_map(routes: dict[str, str]) -> str:
    """The nginx ``map`` from route key to upstream (the instance's name), unknown routes to ''."""
    lines = ["# skladbridge shards: printed by `flask --app app shards nginx-map`; do not edit, print it again.",
             "# It holds the webhook secrets: keep it readable by root and nginx only (0640 root:www-data).",
             "map $skladbridge_route $skladbridge_shard {",
             '    default "";']
    for key, name in sorted(routes.items()):
        lines.append(f'    "{_quoted(key)}" {name};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's EnvironmentFile takes them (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


@click.group("shards")
def shards_cli() -> None:
    """Several instances behind one nginx."""


@shards_cli.command("nginx-map")
@click.argument("instances", nargs=-1, required=True, metavar="NAME=CONFIG[:ENVFILE]...")
def nginx_map_command(instances: tuple[str, ...]) -> None:
    """Print the nginx map that routes each feed, account's pictures, webhook and exchange to its instance.

    Each instance is named (its nginx upstream) and read from its config file, with its secrets from
    ENVFILE (the systemd EnvironmentFile) over this shell's environment.
    """
    settings = {}
    for argument in instances:
        name, _, where = argument.partition("=")
        config, _, env_file = where.partition(":")
        if not name or not config:
            raise click.UsageError(f"{argument!r}: write NAME=CONFIG or NAME=CONFIG:ENVFILE")
        try:
            environ = {**os.environ, **(read_env_file(Path(env_file)) if env_file else {})}
            settings[name] = load_settings(config, environ=environ)
        except ConfigError as exc:
            raise click.ClickException(f"instance {name}: {exc}") from None
        except OSError as exc:  # the env file (or the config) cannot be read
            raise click.ClickException(f"instance {name}: cannot read {exc.filename or where}: "
                                       f"{exc.strerror or exc}") from None
    try:
        click.echo(nginx_map(shard_routes(settings)), nl=False)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
