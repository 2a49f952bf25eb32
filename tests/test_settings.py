import pytest

from shared.settings import SettingsError, load_settings


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
