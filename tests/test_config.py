"""Settings: defaults in code, settings.toml, then DIGEST_*; errors name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from digest.cli import main
from digest.config import (
    Settings,
    build_settings,
    default_settings_text,
    find_settings_file,
    init_folder,
    load_settings,
)
from digest.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = build_settings({}, root=tmp_path)
    assert settings.mail.transport == "maildir"
    assert settings.inbox.dir == tmp_path / "inbox"
    assert settings.database.url == f"sqlite:///{tmp_path / 'digest.db'}"


def test_file_overrides_defaults_and_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[smtp]\nhost = "mail.example.org"\nport = 587\n[inbox]\ndir = "in"\n')
    settings = load_settings(
        path, env={"DIGEST_SMTP_PORT": "2525", "DIGEST_WEB_SIGNUP_ENABLED": "yes"}
    )
    assert settings.smtp.host == "mail.example.org"
    assert settings.smtp.port == 2525
    assert settings.web.signup_enabled is True
    assert settings.inbox.dir == tmp_path / "in"  # relative to the settings file's folder


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        ({"inbox": {"dri": "x"}}, {}, "unknown key 'inbox.dri'"),
        ({"inboxx": {}}, {}, "unknown section [inboxx]"),
        ({"smtp": {"port": "25"}}, {}, "'smtp.port': expected a whole number"),
        ({"web": {"signup_enabled": 1}}, {}, "'web.signup_enabled': expected true or false"),
        ({"mail": {"transport": "pigeon"}}, {}, "'mail.transport' must be"),
        ({"schedule": {"default_tz": "Mars/Olympus"}}, {}, "'schedule.default_tz' unknown"),
        ({"schedule": {"default_time": "7am"}}, {}, "'schedule.default_time' must be HH:MM"),
        ({}, {"DIGEST_SMTP_PORT": "many"}, "DIGEST_SMTP_PORT: expected a whole number"),
        ({"smtp": {"port": 0}}, {}, "'smtp.port' must be between"),
        ({"database": {"url": "mysql://x"}}, {}, "'database.url' must be"),
        ({"inbox": {"poll_seconds": 0}}, {}, "'inbox.poll_seconds' must be more than 0"),
        ({"site": {"base_url": "https://papers example.org"}}, {}, "'site.base_url' must be a URL"),
        ({"site": {"base_url": "https:///path"}}, {}, "'site.base_url' must be a URL with a host"),
        ({"smtp": {"timeout_seconds": 0.0}}, {}, "'smtp.timeout_seconds' must be more than 0"),
        ({"mail": {"from_addr": "a@b.org\r\nBcc: x@y.org"}}, {}, "'mail.from_addr' must be one"),
        ({}, {"DIGEST_MAIL_FROM_ADDR": "Me <me@x.org>\nX: y"}, "'mail.from_addr' must be one"),
        ({"mail": {"from_addr": "nobody"}}, {}, "'mail.from_addr' must be an address"),
        ({"mail": {"reply_to": "a@b.org\n"}}, {}, "'mail.reply_to' must be one line"),
    ],
)
def test_bad_settings_name_the_key(data: dict, env: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build_settings(data, env=env, root=tmp_path)
    assert message in str(err.value)


def test_settings_file_is_found_by_flag_then_environment_then_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIGEST_CONFIG", raising=False)
    assert find_settings_file(None) == Path("settings.toml")
    monkeypatch.setenv("DIGEST_CONFIG", "/etc/digest.toml")
    assert find_settings_file(None) == Path("/etc/digest.toml")
    assert find_settings_file("mine.toml") == Path("mine.toml")


def test_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[inbox\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_commented_default_file_lists_every_key_at_its_default(tmp_path: Path) -> None:
    data = tomllib.loads(default_settings_text())
    assert build_settings(data, root=tmp_path) == build_settings({}, root=tmp_path)
    text = default_settings_text()
    for section in ("database", "inbox", "mail", "smtp", "site", "feeds", "web", "schedule"):
        assert f"[{section}]" in text
    assert text.count("\n# ") > 40  # every key carries its help line


def test_init_keeps_everything_inside_the_folder_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "site"
    settings = init_folder(target)
    for path in (
        settings.inbox.dir,
        settings.inbox.processed_dir,
        settings.inbox.failed_dir,
        settings.mail.maildir,
        settings.feeds.public_dir,
    ):
        assert path.is_relative_to(target)
    assert settings.database.url.startswith(f"sqlite:///{target}")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_folder(target)


def test_init_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "d")]) == 0
    assert main(["init", str(tmp_path / "d")]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_the_checkout_settings_file_is_valid_and_keeps_data_under_var() -> None:
    settings = load_settings(ROOT / "settings.toml", env={})
    assert isinstance(settings, Settings)
    assert settings.inbox.dir == ROOT / "var" / "inbox"
    assert settings.database.url == f"sqlite:///{ROOT / 'var' / 'digest.db'}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["init", "--help"],
        ["parse", "--help"],
        ["ingest", "--help"],
        ["send", "--help"],
        ["preview", "--help"],
        ["feeds", "--help"],
        ["status", "--help"],
        ["subscriber", "add", "--help"],
        ["subscriber", "export-data", "--help"],
        ["subscriber", "wipe", "--help"],
        ["match", "--help"],
        ["history", "--help"],
        ["serve", "--help"],
        ["run", "--help"],
    ],
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    assert "usage: digest" in capsys.readouterr().out


def test_wrong_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["frobnicate"])
    assert done.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
