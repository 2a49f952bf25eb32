import pytest
from pydantic import SecretStr

from shared.settings import Settings, SettingsError, load_settings


def test_defaults_derive_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDQA_DATABASE_URL", raising=False)
    s = load_settings(data_dir=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'medqa.db'}"
    assert s.artifacts == tmp_path / "artifacts"
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.policy_file is not None and s.policy_file.name == "policy.toml" and s.policy_file.exists()


@pytest.mark.parametrize(("var", "value", "needle"), [
    ("MEDQA_TRAIN_MAX_STEPS", "zero", "MEDQA_TRAIN_MAX_STEPS"),
    ("MEDQA_REPLAY_RATIO", "1.5", "MEDQA_REPLAY_RATIO"),
    ("MEDQA_TRAIN_PRECISION", "fp8", "MEDQA_TRAIN_PRECISION"),
])
def test_bad_value_names_the_setting(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert needle in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize(("var", "value"), [
    ("MEDQA_BROKER_URL", "amqp://guest:hunter2@rabbit//"),
    ("MEDQA_DATABASE_URL", "mysql://root:hunter2@db/medqa"),
    ("MEDQA_ALERT_WEBHOOK_URL", "ftp://hooks.example/hunter2"),
])
def test_a_bad_secret_setting_is_named_but_never_echoed(monkeypatch, var, value):
    """Before: the error repeated the value, password included."""
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert f"{var}=<redacted>" in str(err.value) and "hunter2" not in str(err.value)


def test_secret_settings_are_secret_types_and_never_in_the_settings_repr(monkeypatch):
    """Before: the SMTP password, the NCBI key and the webhook URL were plain strings, and the
    settings' repr showed them and the database URL's password."""
    for var, value in {"MEDQA_ALERT_SMTP_PASSWORD": "hunter2-smtp", "MEDQA_NCBI_API_KEY": "hunter2-ncbi",
                       "MEDQA_ALERT_WEBHOOK_URL": "https://hooks.example/T0/hunter2-hook",
                       "MEDQA_DATABASE_URL": "postgresql+psycopg://medqa:hunter2-db@db/medqa",
                       "MEDQA_BROKER_URL": "redis://:hunter2-redis@redis:6379/0"}.items():
        monkeypatch.setenv(var, value)
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    for name in ("alert_smtp_password", "ncbi_api_key", "alert_webhook_url", "api_token"):
        assert Settings.model_fields[name].annotation == SecretStr | None, name
    assert s.ncbi_api_key is not None and s.ncbi_api_key.get_secret_value() == "hunter2-ncbi"
    assert s.database_url.endswith("hunter2-db@db/medqa")  # the drivers still get the real URL


def test_redacted_url_hides_only_the_password():
    from shared.settings import redacted_url

    assert redacted_url("postgresql+psycopg://medqa:hunter2@db:5432/medqa") == \
        "postgresql+psycopg://medqa:***@db:5432/medqa"
    assert redacted_url("sqlite:////data/medqa.db") == "sqlite:////data/medqa.db"


def test_env_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDQA_TRIGGER_MIN_NEW", raising=False)
    (tmp_path / ".env").write_text("MEDQA_TRIGGER_MIN_NEW=77\n")
    assert load_settings().trigger_min_new == 77


def test_cli_refuses_to_start_on_bad_setting(monkeypatch):
    from typer.testing import CliRunner

    from services.cli import app
    from shared.settings import reset_settings

    monkeypatch.setenv("MEDQA_MAX_DELIVERIES", "-1")
    reset_settings()
    result = CliRunner().invoke(app, ["status"])
    reset_settings()
    assert result.exit_code == 2
    assert "MEDQA_MAX_DELIVERIES" in result.output


def test_a_rule_across_settings_never_echoes_them(monkeypatch):
    """Before: a rule over several settings (loc empty) printed every setting's input, tokens included."""
    monkeypatch.setenv("MEDQA_API_TOKEN", "hunter2-operator")
    monkeypatch.setenv("MEDQA_API_REVIEWER_TOKENS", "alice=hunter2-operator")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "must not contain the operator token" in str(err.value) and "hunter2" not in str(err.value)


def test_the_console_script_reports_a_bad_setting_in_one_line():
    """Before: the Celery app reads the settings while `medqa` imports its commands, so a bad value
    came out as a 20-line traceback before the one line that named it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("medqa")
    env = {**os.environ, "MEDQA_API_BATCH_MAX": "many", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(script), "status"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: bad setting: MEDQA_API_BATCH_MAX='many': Input should be a valid integer, unable to parse string "
        "as an integer"]
