"""Configuration layering: defaults < config.toml < PACD_* environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacd.config import Config, load_config
from pacd.errors import ConfigError


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    cfg = load_config({"PACD_CONFIG": str(tmp_path / "absent.toml"),
                       "XDG_RUNTIME_DIR": str(tmp_path / "rt")})
    assert cfg.keystore == "keychain"
    assert cfg.token_lifetime_s == 3600
    assert cfg.socket == tmp_path / "rt" / "pacd" / "pacd.sock"
    assert cfg.origin == "https://pacd.localhost"


def test_file_then_environment_override(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('token_lifetime_s = 60\nimage_repository = "localhost/mine"\n')
    cfg = load_config({"PACD_CONFIG": str(conf), "PACD_TOKEN_LIFETIME": "120",
                       "PACD_HOME": str(tmp_path / "home")})
    assert cfg.token_lifetime_s == 120  # env beats file
    assert cfg.image_repository == "localhost/mine"  # file beats default
    assert cfg.home == tmp_path / "home"
    assert cfg.state_db == tmp_path / "home" / "state.sqlite3"


def test_home_without_runtime_dir_keeps_socket_under_home(tmp_path: Path) -> None:
    cfg = load_config({"PACD_CONFIG": str(tmp_path / "x.toml"), "PACD_HOME": str(tmp_path)})
    assert cfg.socket == tmp_path / "run" / "pacd.sock"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tokn_lifetime_s = 3\n", "unknown key 'tokn_lifetime_s'"),
        ('token_lifetime_s = "soon"\n', "token_lifetime_s must be int"),
        ("token_lifetime_s = true\n", "token_lifetime_s must be int"),
        ("rp_id = 5\n", "rp_id must be str"),
        ('keystore = "plaintext"\n', "keystore must be 'keychain' or 'passphrase'"),
        ('keystore = "passphrase"\n', "needs passphrase_file"),
        ("config_path = '/x'\n", "unknown key 'config_path'"),
        ("not toml = = \n", "cannot read"),
        ('attestation = "indirect"\n', "attestation must be 'none' or 'direct'"),
        ('attestation = "direct"\n', "'direct' needs allowed_aaguids"),
        ('allowed_aaguids = ["cb69481e-8ff7-4039-93ec-0a2729a154a8"]\n',
         "only checked with attestation = 'direct'"),
        ('attestation = "direct"\nallowed_aaguids = ["yubikey"]\n', "'yubikey' is not an AAGUID"),
        ("token_lifetime_s = 3601\n", "token_lifetime_s (in "),
        ("token_lifetime_s = 0\n", "token_lifetime_s (in "),
        ("approval_ttl_s = 86401\n", "approval_ttl_s (in "),
        ("max_body_bytes = 0\n", "max_body_bytes (in "),
        ("max_connections = -1\n", "max_connections (in "),
        ("header_timeout_s = nan\n", "header_timeout_s (in "),
        ("retention_interval_s = 0.0\n", "retention_interval_s (in "),
        ("platform_presence_timeout_s = -inf\n", "platform_presence_timeout_s (in "),
        ("max_pending_approvals = 0\n", "max_pending_approvals (in "),
        ("max_tokenless_body_bytes = -1\n", "max_tokenless_body_bytes (in "),
        ("quota_per_container_bytes = -5\n", "quota_per_container_bytes (in "),
    ],
)
def test_bad_config_is_refused_with_its_reason(tmp_path: Path, text: str, fragment: str) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config({"PACD_CONFIG": str(conf)})
    assert fragment in info.value.message


def test_passphrase_keystore_only_when_asked(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(f'keystore = "passphrase"\npassphrase_file = "{tmp_path / "pw"}"\n')
    cfg = load_config({"PACD_CONFIG": str(conf)})
    assert cfg.keystore == "passphrase"
    assert cfg.passphrase_file == tmp_path / "pw"
    assert Config().keystore == "keychain"


def test_attestation_policy_comes_from_the_file_only(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('attestation = "direct"\n'
                    'allowed_aaguids = ["cb69481e-8ff7-4039-93ec-0a2729a154a8",'
                    ' "7061636473667461757468656e746963"]\n')
    cfg = load_config({"PACD_CONFIG": str(conf), "PACD_ATTESTATION": "none"})
    assert cfg.attestation == "direct"
    assert len(cfg.allowed_aaguids) == 2
    assert Config().attestation == "none"


def test_group_writable_config_file_is_refused_naming_the_fix(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text("token_lifetime_s = 60\n")
    conf.chmod(0o620)
    with pytest.raises(ConfigError) as info:
        load_config({"PACD_CONFIG": str(conf)})
    assert f"chmod 600 {conf}" in info.value.message
    conf.chmod(0o644)  # readable by others is fine: nothing in it is secret
    assert load_config({"PACD_CONFIG": str(conf)}).token_lifetime_s == 60


def test_out_of_range_environment_value_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"approval_ttl_s \(from PACD_APPROVAL_TTL\) must be "
                                          r"at most 86400"):
        load_config({"PACD_CONFIG": str(tmp_path / "absent.toml"),
                     "PACD_APPROVAL_TTL": "172800"})


def test_fprintd_bus_is_read_from_the_file_only(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text('fprintd_bus_address = "unix:path=/tmp/test-bus"\n')
    assert load_config({"PACD_CONFIG": str(conf)}).fprintd_bus_address == (
        "unix:path=/tmp/test-bus")
    with pytest.raises(ConfigError, match="PACD_FPRINTD_BUS is not read from the environment"):
        load_config({"PACD_CONFIG": str(conf), "PACD_FPRINTD_BUS": "unix:path=/tmp/other"})


def test_loopback_egress_is_off_by_default_and_never_from_the_environment(
        tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.toml")
    assert load_config({"PACD_CONFIG": absent}).egress_allow_loopback is False
    conf = tmp_path / "config.toml"
    conf.write_text("egress_allow_loopback = true\n")
    assert load_config({"PACD_CONFIG": str(conf)}).egress_allow_loopback is True
    with pytest.raises(ConfigError, match="PACD_EGRESS_ALLOW_LOOPBACK is not read from the "
                                          r"environment .*owner's own machine"):
        load_config({"PACD_CONFIG": absent, "PACD_EGRESS_ALLOW_LOOPBACK": "true"})


def test_unrestricted_egress_setting_is_refused_not_silently_ignored(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text("unrestricted_egress = true\n")
    with pytest.raises(ConfigError, match=r"unrestricted_egress \(in .*\) was removed: "
                                          "networked agents now reach the outside only "
                                          "through pacd's egress proxy"):
        load_config({"PACD_CONFIG": str(conf)})
    with pytest.raises(ConfigError, match="PACD_UNRESTRICTED_EGRESS was removed"):
        load_config({"PACD_CONFIG": str(tmp_path / "absent.toml"),
                     "PACD_UNRESTRICTED_EGRESS": "false"})
