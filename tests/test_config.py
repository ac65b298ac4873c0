"""config.toml: every key's default, every refusal naming its key, where the file and
the database are found, and that config.example.toml documents exactly the real keys."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import DEFAULTS, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent

# Written out from the contract rather than read from DEFAULTS, so a changed default is noticed.
SPEC_DEFAULTS = {
    "meta": {
        "verify_token": "",
        "app_secret": "",
        "access_token": "",
        "graph_url": "https://graph.facebook.com/v23.0",
        "silence_hours": 0,
    },
    "storage": {"database": "data/wahook.db", "synchronous": "full", "retention_days": 30},
    "media": {"max_bytes": 104857600, "link_days": 7},
    "redis": {"url": "embedded"},
    "delivery": {
        "timeout": 10,
        "retry_schedule": [10, 10, 10],
        "allow_http": False,
        "allow_private_urls": False,
        "workers": 1,
        "auto_recover": True,
        "disable_after_hours": 72,
    },
    "api": {"allowed_origins": []},
    "admin": {"password": "", "secret_key": "", "metrics_token": ""},
}

# A good value other than the default, for the keys whose value has a form.
OTHER_VALUES = {
    "url": "redis://127.0.0.1:6379/0",
    "synchronous": "normal",
    "graph_url": "http://127.0.0.1:9/v23.0",
    "auto_recover": False,
    "allowed_origins": ["https://inbox.example.com", "http://127.0.0.1:5173"],
}


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str) -> str:
    """The one-line message a config file is refused with."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    return message


# -- defaults


def test_every_default_when_there_is_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WAHOOK_CONFIG", raising=False)
    config = load_config()
    assert config.sections == SPEC_DEFAULTS
    assert config.path is None
    assert config.redis_embedded
    assert config.database_path == tmp_path / "data" / "wahook.db"
    assert config.data_dir == tmp_path / "data"


def test_an_empty_file_means_every_default(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.sections == SPEC_DEFAULTS
    assert config.path == (tmp_path / "config.toml").resolve()


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, keys in SPEC_DEFAULTS.items() for k in keys])
def test_each_key_alone_keeps_the_other_defaults(tmp_path, section, key):
    default = SPEC_DEFAULTS[section][key]
    value = OTHER_VALUES.get(key, {str: "x", bool: True, int: 7, list: [1, 2]}[type(default)])
    text = f"[{section}]\n{key} = {toml_value(value)}\n"
    config = load_config(write(tmp_path, text))
    expected = {s: dict(keys) for s, keys in SPEC_DEFAULTS.items()}
    expected[section][key] = value
    assert config.sections == expected


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def test_defaults_table_matches_the_contract():
    assert DEFAULTS == SPEC_DEFAULTS


def test_the_example_config_lists_every_key_with_its_default():
    example = tomllib.loads((ROOT / "config.example.toml").read_text(encoding="utf-8"))
    assert example == SPEC_DEFAULTS
    load_config(ROOT / "config.example.toml")  # and it passes every check


def test_the_example_config_explains_every_key():
    lines = (ROOT / "config.example.toml").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"


# -- refusals, each naming the key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[meta]\nverify_token = 1", "meta.verify_token"),
        ("[meta]\napp_secret = true", "meta.app_secret"),
        ("[storage]\ndatabase = 5", "storage.database"),
        ('[storage]\ndatabase = ""', "storage.database"),
        ('[storage]\nretention_days = "30"', "storage.retention_days"),
        ("[storage]\nretention_days = 1.5", "storage.retention_days"),
        ("[storage]\nretention_days = 0", "storage.retention_days"),
        ("[storage]\nretention_days = -3", "storage.retention_days"),
        ("[redis]\nurl = 6379", "redis.url"),
        ('[delivery]\ntimeout = "10"', "delivery.timeout"),
        ("[delivery]\ntimeout = true", "delivery.timeout"),
        ("[delivery]\ntimeout = 0", "delivery.timeout"),
        ("[delivery]\ntimeout = -1", "delivery.timeout"),
        ("[delivery]\ntimeout = -0.5", "delivery.timeout"),
        ("[delivery]\ntimeout = 0.0", "delivery.timeout"),
        ('[delivery]\nallow_http = "yes"', "delivery.allow_http"),
        ("[delivery]\nallow_http = 1", "delivery.allow_http"),
        ("[delivery]\nallow_private_urls = 0", "delivery.allow_private_urls"),
        ("[delivery]\nworkers = 1.5", "delivery.workers"),
        ('[delivery]\nworkers = "2"', "delivery.workers"),
        ("[delivery]\nworkers = 0", "delivery.workers"),
        ("[delivery]\nworkers = -1", "delivery.workers"),
        ("[delivery]\nworkers = 100000", "delivery.workers"),
        ("[delivery]\ntimeout = nan", "delivery.timeout"),
        ("[delivery]\ntimeout = inf", "delivery.timeout"),
        ("[storage]\nretention_days = 1000000", "storage.retention_days"),
        ("[admin]\npassword = 123", "admin.password"),
        ("[admin]\nsecret_key = []", "admin.secret_key"),
        ("[admin]\nmetrics_token = 1", "admin.metrics_token"),
        ('[storage]\nsynchronous = "off"', "storage.synchronous"),
        ('[storage]\nsynchronous = "FULL"', "storage.synchronous"),
        ("[storage]\nsynchronous = true", "storage.synchronous"),
        ("[meta]\naccess_token = 5", "meta.access_token"),
        ('[meta]\ngraph_url = "graph.facebook.com"', "meta.graph_url"),
        ("[meta]\nsilence_hours = -1", "meta.silence_hours"),
        ('[meta]\nsilence_hours = "2"', "meta.silence_hours"),
        ("[meta]\nsilence_hours = nan", "meta.silence_hours"),
        ("[media]\nmax_bytes = 0", "media.max_bytes"),
        ("[media]\nmax_bytes = 1.5", "media.max_bytes"),
        ("[media]\nlink_days = 0", "media.link_days"),
        ("[media]\nlink_days = 100000", "media.link_days"),
        ('[delivery]\nauto_recover = "yes"', "delivery.auto_recover"),
        ("[delivery]\ndisable_after_hours = -1", "delivery.disable_after_hours"),
        ("[delivery]\ndisable_after_hours = true", "delivery.disable_after_hours"),
    ],
)
def test_a_wrong_value_names_its_key(tmp_path, text, key):
    assert key in refused(tmp_path, text)


@pytest.mark.parametrize(
    "value",
    [
        '"10"',
        "10",
        '["a"]',
        "[10, true]",
        "[-1]",
        "[10, -0.5]",
        "[[10]]",
        "{ first = 10 }",
        "[" + ", ".join(["1"] * 51) + "]",
        "[nan]",
        "[inf]",
        "[10, -inf]",
        "[1e9]",
    ],
)
def test_a_bad_retry_schedule_names_its_key(tmp_path, value):
    assert "delivery.retry_schedule" in refused(tmp_path, f"[delivery]\nretry_schedule = {value}")


@pytest.mark.parametrize("value", ["[]", "[0]", "[1.5, 30, 300]", "[" + ", ".join(["1"] * 50) + "]"])
def test_a_good_retry_schedule_is_kept(tmp_path, value):
    config = load_config(write(tmp_path, f"[delivery]\nretry_schedule = {value}"))
    assert config["delivery"]["retry_schedule"] == tomllib.loads(f"v = {value}")["v"]


@pytest.mark.parametrize(
    "url", ["", "localhost:6379", "http://127.0.0.1:6379", "redis", "Embedded", "tcp://127.0.0.1:6379"]
)
def test_a_bad_redis_url_names_its_key(tmp_path, url):
    assert "redis.url" in refused(tmp_path, f'[redis]\nurl = "{url}"')


@pytest.mark.parametrize(
    "url", ["embedded", "redis://127.0.0.1:6379/0", "rediss://cache.example.com:6380", "unix:///run/redis.sock"]
)
def test_a_good_redis_url_is_kept(tmp_path, url):
    config = load_config(write(tmp_path, f'[redis]\nurl = "{url}"'))
    assert config["redis"]["url"] == url
    assert config.redis_embedded == (url == "embedded")


def test_fractional_timeout_is_allowed(tmp_path):
    assert load_config(write(tmp_path, "[delivery]\ntimeout = 2.5"))["delivery"]["timeout"] == 2.5


def test_fractional_hours_are_allowed(tmp_path):
    config = load_config(write(tmp_path, "[meta]\nsilence_hours = 0.001\n[delivery]\ndisable_after_hours = 0.5"))
    assert config["meta"]["silence_hours"] == 0.001
    assert config["delivery"]["disable_after_hours"] == 0.5


def test_an_unknown_section_is_named(tmp_path):
    assert "deliveries" in refused(tmp_path, "[deliveries]\ntimeout = 5")


def test_an_unknown_key_is_named(tmp_path):
    assert "delivery.timout" in refused(tmp_path, "[delivery]\ntimout = 5")


def test_a_key_outside_any_section_is_named(tmp_path):
    assert "timeout" in refused(tmp_path, "timeout = 5")


def test_a_section_that_is_not_a_table_is_named(tmp_path):
    assert "meta" in refused(tmp_path, 'meta = "x"')


def test_overrides_are_checked_like_the_file(tmp_path):
    with pytest.raises(ConfigError, match="delivery.workers"):
        load_config(tmp_path / "missing.toml", {"delivery": {"workers": 0}})
    config = load_config(tmp_path / "missing.toml", {"delivery": {"workers": 3}})
    assert config["delivery"]["workers"] == 3


# -- the file and the database path


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[meta\nverify_token = ")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "TOML" in str(info.value)


def test_text_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'[admin]\npassword = "\xff"\n')
    with pytest.raises(ConfigError):
        load_config(path)


def test_wahook_config_names_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "[delivery]\nworkers = 4", name="elsewhere/wahook.toml")
    monkeypatch.setenv("WAHOOK_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[delivery]\nworkers = 2")  # ./config.toml, not read
    config = load_config()
    assert config["delivery"]["workers"] == 4
    assert config.path == path.resolve()


def test_without_wahook_config_the_file_is_config_toml_here(tmp_path, monkeypatch):
    monkeypatch.delenv("WAHOOK_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[delivery]\nworkers = 2")
    assert load_config()["delivery"]["workers"] == 2


def test_an_explicit_path_wins_over_wahook_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WAHOOK_CONFIG", str(write(tmp_path, "[delivery]\nworkers = 4", name="a.toml")))
    assert load_config(write(tmp_path, "[delivery]\nworkers = 5", name="b.toml"))["delivery"]["workers"] == 5


def test_a_relative_database_is_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    path = write(tmp_path, '[storage]\ndatabase = "state/hooks.db"', name="etc/wahook/config.toml")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert config.database_path == (tmp_path / "etc" / "wahook" / "state" / "hooks.db").resolve()
    assert config.data_dir == config.database_path.parent


def test_a_relative_config_path_still_anchors_the_database_to_its_folder(tmp_path, monkeypatch):
    write(tmp_path, "", name="conf/config.toml")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/config.toml")
    assert config.database_path == (tmp_path / "conf" / "data" / "wahook.db").resolve()


def test_an_absolute_database_path_is_kept(tmp_path):
    target = tmp_path / "var" / "wahook.db"
    config = load_config(write(tmp_path, f'[storage]\ndatabase = "{target}"', name="etc/config.toml"))
    assert config.database_path == target


def test_a_home_relative_database_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_config(write(tmp_path, '[storage]\ndatabase = "~/wahook/wahook.db"'))
    assert config.database_path == tmp_path / "home" / "wahook" / "wahook.db"


def test_a_postgresql_url_keeps_a_local_data_folder(tmp_path, monkeypatch):
    url = "postgresql://wahook:pw@db.internal:5432/wahook"
    path = write(tmp_path, f'[storage]\ndatabase = "{url}"', name="etc/wahook/config.toml")
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = load_config(path)
    assert config.database == config.database_url == url
    assert config.data_dir == (tmp_path / "etc" / "wahook" / "data").resolve()
    # Under systemd the unit's StateDirectory holds it: /etc is read-only to the service.
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "var" / "lib" / "wahook"))
    assert load_config(path).data_dir == tmp_path / "var" / "lib" / "wahook"
    plain = load_config(write(tmp_path, '[storage]\ndatabase = "hooks.db"', name="x/config.toml"))
    assert plain.database_url == "" and plain.database == str(plain.database_path)


@pytest.mark.parametrize(
    "value",
    ['"https://inbox.example.com"', '["https://inbox.example.com/"]', '["inbox.example.com"]', '["*"]', "[1]"],
)
def test_allowed_origins_must_be_origins(tmp_path, value):
    message = refused(tmp_path, f"[api]\nallowed_origins = {value}")
    assert "api.allowed_origins" in message
