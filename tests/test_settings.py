"""The one settings object: MADE_* environment variables, defaults, and the bounds it enforces."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_environment_variables_with_the_made_prefix_set_the_fields(monkeypatch):
    monkeypatch.setenv("MADE_MAX_SAMPLE_N", "7")
    monkeypatch.setenv("MADE_MODEL_VERSIONS", '{"tiny": 3}')
    monkeypatch.setenv("MADE_MODELS", '["tiny"]')
    monkeypatch.setenv("MADE_ADMIN_TOKEN", "s3cret")
    settings = Settings()
    assert settings.max_sample_n == 7 and settings.model_versions == {"tiny": 3}
    assert settings.models == ["tiny"]
    assert settings.admin_token.get_secret_value() == "s3cret" and "s3cret" not in repr(settings)


def test_defaults_and_an_empty_model_list_meaning_every_model():
    settings = Settings(models=[])
    assert settings.models is None and settings.model_repository == Path("models")
    assert settings.max_batch_rows == 4096 and settings.request_timeout_s == 30.0


@pytest.mark.parametrize(
    "field",
    [
        {"port": 70000},
        {"max_body_bytes": 10},
        {"request_timeout_s": 0},
        {"max_sample_n": 0},
        {"log_level": "loud"},
        {"no_such_setting": 1},
    ],
)
def test_out_of_bounds_or_unknown_settings_are_refused(field):
    with pytest.raises(ValidationError):
        Settings(**field)
