"""Settings: typed frozen dataclasses; defaults in code, settings.toml, then DIGEST_* on top.

The settings file is `--config`, else `$DIGEST_CONFIG`, else `./settings.toml`. Relative paths in
it resolve against the folder of the settings file. An environment variable named
`DIGEST_<SECTION>_<KEY>` (upper case) overrides `[section] key`. Unknown keys and wrong types are
errors that name the key.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import os
import re
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.errors import ConfigError


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = _opt(
        "sqlite:///digest.db",
        "SQLAlchemy URL. SQLite paths are relative to this file; PostgreSQL: "
        "postgresql+psycopg://user:password@host/dbname",
    )


@dataclass(frozen=True)
class InboxSettings:
    dir: Path = _opt(Path("inbox"), "Folder where new dumps arrive (write NAME.part, then rename).")
    processed_dir: Path = _opt(Path("processed"), "Dumps move here once stored.")
    failed_dir: Path = _opt(Path("failed"), "Bad dumps move here, with NAME.error.txt beside them.")
    settle_seconds: float = _opt(
        2.0, "A dump must keep its size and mtime this long before it is taken."
    )
    max_bytes: int = _opt(20_000_000, "Dumps larger than this are refused.")
    poll_seconds: float = _opt(30.0, "How often the daemon looks at the inbox.")


@dataclass(frozen=True)
class MailSettings:
    transport: str = _opt("maildir", "maildir (writes files) or smtp.")
    maildir: Path = _opt(Path("maildir"), "Maildir folder of the maildir transport.")
    from_addr: str = _opt("Daily Papers Digest <digest@localhost>", "From header.")
    reply_to: str = _opt("", "Reply-To header; empty for none.")
    admin_note: str = _opt("", "Optional note in Markdown shown at the top of every digest.")
    max_papers: int = _opt(30, "At most this many papers in one digest (the best ranked).")
    abstract_chars: int = _opt(400, "Abstracts are shortened to about this many characters.")
    max_bounces: int = _opt(3, "After this many hard bounces a subscriber becomes 'bouncing'.")
    retry_attempts: int = _opt(5, "Attempts for a temporary (4xx) SMTP failure.")
    retry_base_seconds: float = _opt(30.0, "First retry delay; doubles on each attempt.")
    processes: int = _opt(
        0,
        "Processes that render and send a long queue (helpers join at 400 queued digests "
        "each); 0: one per CPU, at most 4; 1: only the process that delivers.",
    )


@dataclass(frozen=True)
class SmtpSettings:
    host: str = _opt("localhost", "SMTP server host.")
    port: int = _opt(25, "SMTP server port.")
    security: str = _opt("none", "none, starttls or tls (implicit TLS).")
    user: str = _opt("", "Login user; empty for no login.")
    password_env: str = _opt(
        "DIGEST_SMTP_PASSWORD", "Name of the environment variable that holds the password."
    )
    connections: int = _opt(1, "Parallel SMTP connections.")
    rate_per_second: float = _opt(0.0, "Messages per second at most; 0 for no limit.")
    timeout_seconds: float = _opt(30.0, "Socket timeout.")


@dataclass(frozen=True)
class SiteSettings:
    title: str = _opt("Daily Papers Digest", "Name shown in emails, feeds and pages.")
    base_url: str = _opt(
        "http://localhost:8000", "Public URL of `digest serve`, used in links and feeds."
    )
    list_id: str = _opt("daily-papers.localhost", "List-Id of the digests.")
    unsubscribe_mailto: str = _opt(
        "", "Address for mailto unsubscribes; empty derives unsubscribe@<from domain>."
    )
    operator_email: str = _opt(
        "", "Send-health alerts are mailed here (at most once a day per kind); empty for none."
    )


@dataclass(frozen=True)
class FeedSettings:
    public_dir: Path = _opt(Path("public"), "Static feeds are written here.")
    max_items: int = _opt(100, "Items per feed at most.")
    max_bytes: int = _opt(2_000_000, "A feed is cut to stay under this size.")
    tag_authority: str = _opt(
        "",
        "Authority of the feed entry ids (tag:AUTHORITY,2025:paper/KEY); empty: the host of the "
        "first site.base_url, kept in the database, so moving the site does not renew every item.",
    )


@dataclass(frozen=True)
class WebSettings:
    host: str = _opt("127.0.0.1", "Address `digest serve` listens on.")
    port: int = _opt(8000, "Port `digest serve` listens on.")
    admin_password_hash: str = _opt(
        "", "Admin password hash (`digest admin-password`); empty disables the admin UI."
    )
    secret_key: str = _opt(
        "", "Secret for signed links and sessions; empty generates one kept in the database."
    )
    signup_enabled: bool = _opt(False, "Public sign-up form with double opt-in.")
    signup_limit_per_client: str = _opt(
        "5 per minute; 30 per hour",
        "Sign-ups one client address may make (limits syntax, ';' between rates); more get 429.",
    )
    signup_limit_per_address: str = _opt(
        "3 per hour; 10 per day",
        "Sign-ups (and re-subscribe requests) for one email address, from any client.",
    )
    confirm_interval_minutes: float = _opt(
        60.0,
        "At most one confirmation email per address in this many minutes (kept in the database).",
    )
    preview_dumps: int = _opt(5, "The live preview backtests a profile on this many recent dumps.")


@dataclass(frozen=True)
class ScheduleSettings:
    default_time: str = _opt("07:00", "Delivery time of new subscribers (HH:MM).")
    default_tz: str = _opt("UTC", "Time zone of new subscribers (IANA name).")
    feeds_minutes: float = _opt(15.0, "How often the daemon rewrites the static feeds.")
    misfire_grace_seconds: int = _opt(
        6 * 3600,
        "A job that starts late while the daemon runs (machine suspended) still runs if this "
        "late at most. Digests missed while the daemon was down are sent once at its start.",
    )
    shutdown_seconds: float = _opt(30.0, "On SIGTERM, finish the message in flight within this.")


@dataclass(frozen=True)
class HealthSettings:
    stale_days: float = _opt(
        3.0, "Warn when no new paper was stored for this many days while subscribers are due."
    )
    jump_factor: float = _opt(
        10.0, "Warn when a run's digests or papers per digest reach this many times the median."
    )
    recent_runs: int = _opt(20, "The median is taken over at most this many recent runs.")
    recent_days: float = _opt(14.0, "Recent runs: those of the last this many days.")
    min_runs: int = _opt(3, "No jump warning before this many recent runs to compare with.")
    failure_rate: float = _opt(
        0.2, "Warn when more than this share of the recent digests failed or bounced."
    )
    failure_days: float = _opt(1.0, "The failure rate counts the digests of this many days.")
    min_outcomes: int = _opt(10, "No failure-rate warning on fewer settled digests than this.")


@dataclass(frozen=True)
class RankSettings:
    rising_min_gain: int = _opt(
        20, "A paper is rising when a dump shows at least this many more upvotes than before..."
    )
    rising_ratio: float = _opt(
        2.0, "...and at least this many times its previous upvotes (both must hold)."
    )
    rising_days: float = _opt(
        7.0, "A rising paper comes back in digests planned within this many days of its jump."
    )


@dataclass(frozen=True)
class TemplateSettings:
    override_dir: Path | None = _opt(
        None, "Folder of template overrides (same layout as templates/), searched first."
    )


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    inbox: InboxSettings = field(default_factory=InboxSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    site: SiteSettings = field(default_factory=SiteSettings)
    feeds: FeedSettings = field(default_factory=FeedSettings)
    web: WebSettings = field(default_factory=WebSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    rank: RankSettings = field(default_factory=RankSettings)
    templates: TemplateSettings = field(default_factory=TemplateSettings)
    root: Path = field(default=Path("."), metadata={"internal": True})
    source: Path | None = field(default=None, metadata={"internal": True})


_SECTIONS: dict[str, type] = {
    name: hint
    for name, hint in typing.get_type_hints(Settings).items()
    if not next(f for f in dataclasses.fields(Settings) if f.name == name).metadata.get("internal")
}


def find_settings_file(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Locate the settings file: --config, else $DIGEST_CONFIG, else ./settings.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DIGEST_CONFIG")
    if env:
        return Path(env)
    return Path("settings.toml")


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: typing.Mapping[str, str] | None = None,
    require_file: bool = True,
) -> Settings:
    """Read, merge and validate settings; raise ConfigError naming the key on any problem."""
    env = os.environ if env is None else env
    file = find_settings_file(path)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8-sig"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read: {exc}") from None
    elif require_file:
        raise ConfigError(
            f"{file}: settings file not found (create one with `digest init DIR`, "
            "or pass --config PATH / set DIGEST_CONFIG)"
        )
    root = file.resolve().parent
    return build_settings(data, env=env, root=root, source=file if file.exists() else None)


def build_settings(
    data: typing.Mapping[str, Any],
    *,
    env: typing.Mapping[str, str] | None = None,
    root: Path | None = None,
    source: Path | None = None,
) -> Settings:
    """Turn a parsed TOML mapping (plus DIGEST_* variables) into validated Settings."""
    env = {} if env is None else env
    root = (root or Path.cwd()).resolve()
    where = str(source) if source else "settings"
    for section in data:
        if section not in _SECTIONS:
            raise ConfigError(
                f"{where}: unknown section [{section}] (known: {', '.join(_SECTIONS)})"
            )
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: '{name}' must be a table [{name}]")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown key '{name}.{key}' (known: {', '.join(sorted(known))})"
                )
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            dotted = f"{name}.{f.name}"
            env_name = f"DIGEST_{name.upper()}_{f.name.upper()}"
            if env_name in env:
                value = _from_env(env[env_name], hints[f.name], env_name)
                label = f"environment variable {env_name}"
            elif f.name in raw:
                value = raw[f.name]
                label = f"{where}: '{dotted}'"
            elif isinstance(f.default, Path):
                # Relative default paths resolve against the settings folder too, not the cwd.
                value, label = str(f.default), f"default of '{dotted}'"
            else:
                continue
            values[f.name] = _coerce(value, hints[f.name], label, root)
        sections[name] = cls(**values)
    settings = Settings(**sections, root=root, source=source)
    _resolve_paths_in_db_url(settings)
    validate(settings)
    return settings


def _from_env(text: str, hint: Any, label: str) -> Any:
    base = _unwrap_optional(hint)
    if base is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{label}: expected true or false, got {text!r}")
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{label}: expected a whole number, got {text!r}") from None
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{label}: expected a number, got {text!r}") from None
    return text


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _coerce(value: Any, hint: Any, label: str, root: Path) -> Any:
    base = _unwrap_optional(hint)
    optional = base is not hint
    if optional and value in ("", None):
        return None
    if base is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{label}: expected a path string, got {value!r}")
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else root / p
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{label}: expected true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label}: expected a whole number, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{label}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{label}: unsupported setting type {hint!r}")  # pragma: no cover


def _resolve_paths_in_db_url(settings: Settings) -> None:
    url = settings.database.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != prefix + ":memory:":
        rest = url[len(prefix) :]
        if rest and not rest.startswith(":"):
            object.__setattr__(settings.database, "url", prefix + str(settings.root / rest))


_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _check_header_address(
    value: str, *, optional: bool, bad: typing.Callable[[str], ConfigError]
) -> None:
    """An address that goes into a header: one line (CR or LF would inject headers), one
    mailbox with an @."""
    if optional and not value:
        return
    if _HEADER_UNSAFE.search(value):
        raise bad("must be one line without control characters (CR or LF would add headers)")
    _name, addr = email.utils.parseaddr(value)
    if "@" not in addr:
        raise bad(f"must be an address such as 'Daily Papers <digest@example.org>', got {value!r}")


def validate(settings: Settings) -> None:
    """Check values that types alone do not constrain; raise ConfigError naming the key."""
    src = str(settings.source) if settings.source else "settings"

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{src}: '{key}' {why}")

    url = settings.database.url
    if not (url.startswith("sqlite:") or url.startswith("postgresql")):
        raise bad("database.url", f"must be a sqlite: or postgresql+psycopg: URL, got {url!r}")
    if settings.mail.transport not in ("maildir", "smtp"):
        raise bad("mail.transport", f"must be 'maildir' or 'smtp', got {settings.mail.transport!r}")
    if settings.smtp.security not in ("none", "starttls", "tls"):
        raise bad("smtp.security", "must be 'none', 'starttls' or 'tls'")
    if not 0 < settings.smtp.port < 65536:
        raise bad("smtp.port", "must be between 1 and 65535")
    if not 0 < settings.web.port < 65536:
        raise bad("web.port", "must be between 1 and 65535")
    if settings.smtp.connections < 1:
        raise bad("smtp.connections", "must be at least 1")
    if settings.mail.processes < 0:
        raise bad("mail.processes", "must be 0 (one per CPU) or more")
    if settings.smtp.rate_per_second < 0:
        raise bad("smtp.rate_per_second", "must not be negative")
    for key, value in (
        ("inbox.max_bytes", settings.inbox.max_bytes),
        ("feeds.max_items", settings.feeds.max_items),
        ("feeds.max_bytes", settings.feeds.max_bytes),
        ("mail.max_papers", settings.mail.max_papers),
        ("mail.abstract_chars", settings.mail.abstract_chars),
        ("mail.max_bounces", settings.mail.max_bounces),
        ("mail.retry_attempts", settings.mail.retry_attempts),
    ):
        if value < 1:
            raise bad(key, "must be at least 1")
    for key, seconds in (
        ("inbox.poll_seconds", settings.inbox.poll_seconds),
        ("smtp.timeout_seconds", settings.smtp.timeout_seconds),
    ):
        if not seconds > 0:
            raise bad(key, "must be more than 0 seconds")
    for key, address in (
        ("mail.from_addr", settings.mail.from_addr),
        ("mail.reply_to", settings.mail.reply_to),
        ("site.operator_email", settings.site.operator_email),
    ):
        _check_header_address(
            address, optional=key != "mail.from_addr", bad=functools.partial(bad, key)
        )
    health = settings.health
    positive: tuple[tuple[str, float], ...] = (
        ("health.stale_days", health.stale_days),
        ("health.recent_days", health.recent_days),
        ("health.failure_days", health.failure_days),
        ("health.recent_runs", health.recent_runs),
    )
    for key, amount in positive:
        if not amount > 0:
            raise bad(key, "must be more than 0")
    if settings.rank.rising_min_gain < 1:
        raise bad("rank.rising_min_gain", "must be at least 1")
    if not settings.rank.rising_ratio >= 1:
        raise bad("rank.rising_ratio", "must be at least 1 (1: the gain alone decides)")
    if not settings.rank.rising_days > 0:
        raise bad("rank.rising_days", "must be more than 0")
    if not health.jump_factor > 1:
        raise bad("health.jump_factor", "must be more than 1")
    if not 0 < health.failure_rate <= 1:
        raise bad("health.failure_rate", "must be more than 0 and at most 1")
    for key, seconds in (
        ("inbox.settle_seconds", settings.inbox.settle_seconds),
        ("schedule.feeds_minutes", settings.schedule.feeds_minutes),
        ("schedule.shutdown_seconds", settings.schedule.shutdown_seconds),
    ):
        if seconds < 0:
            raise bad(key, "must not be negative")
    if not _HHMM.match(settings.schedule.default_time):
        raise bad("schedule.default_time", "must be HH:MM (24-hour)")
    try:
        ZoneInfo(settings.schedule.default_tz)
    except (ZoneInfoNotFoundError, ValueError):
        tz = settings.schedule.default_tz
        raise bad("schedule.default_tz", f"unknown time zone {tz!r}") from None
    if not settings.site.base_url.startswith(("http://", "https://")):
        raise bad("site.base_url", "must start with http:// or https://")
    base = urllib.parse.urlsplit(settings.site.base_url)
    if not base.hostname or any(c.isspace() or c in '<>"' for c in settings.site.base_url):
        # every link of every email is built on it: a bad one would fail every digest
        raise bad("site.base_url", "must be a URL with a host and no spaces or quotes")


def default_settings_text() -> str:
    """The fully commented settings.toml that `digest init` writes: every key at its default."""
    lines = [
        "# Daily Papers Digest settings.",
        "# Every key is shown at its default. Relative paths resolve against this file's folder.",
        "# Any key can be overridden by an environment variable DIGEST_<SECTION>_<KEY>,",
        "# e.g. DIGEST_DATABASE_URL or DIGEST_SMTP_HOST.",
        "",
    ]
    for name, cls in _SECTIONS.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            lines.append(f"# {f.metadata.get('help', '')}")
            default = f.default
            if default is None:
                lines.append(f'# {f.name} = ""')
                continue
            lines.append(f"{f.name} = {_toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def init_folder(target: Path) -> Settings:
    """Create `target` with a commented settings.toml and the folders it names; never overwrite."""
    settings_file = target / "settings.toml"
    if settings_file.exists():
        raise ConfigError(f"{settings_file}: already exists; refusing to overwrite it")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target}: exists and is not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
        settings_file.write_text(default_settings_text(), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{target}: cannot create it: {exc.strerror or exc}") from None
    settings = load_settings(settings_file)
    for folder in (
        settings.inbox.dir,
        settings.inbox.processed_dir,
        settings.inbox.failed_dir,
        settings.feeds.public_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    return settings
