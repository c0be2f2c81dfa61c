"""Fixtures shared by the whole suite."""
from __future__ import annotations

import pytest
import yaml

from genq.devstack import RedisServer
from shared.db import dispose_engines
from shared.registry import load_registry
from shared.settings import Settings
from tests import tiny_models
from tests.helpers.database import BACKENDS, create_schema, database_url_for, reset_schema


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """An empty database with genq's schema, on SQLite and (when configured) PostgreSQL."""
    url = database_url_for(request.param, tmp_path)
    reset_schema(url)
    create_schema(url)
    yield url
    dispose_engines()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "text": tiny_models.build_tiny_text_model(root / "tiny-text"),
        "uncond": tiny_models.build_tiny_unconditional_image_model(root / "tiny-uncond"),
        "sd": tiny_models.build_tiny_text_to_image_model(root / "tiny-sd"),
    }


@pytest.fixture(scope="session")
def models_file(tmp_path_factory, tiny_model_dirs):
    path = tmp_path_factory.mktemp("registry") / "models.yaml"
    entries = tiny_models.tiny_registry_entries(tiny_model_dirs["text"], tiny_model_dirs["uncond"], tiny_model_dirs["sd"])
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.fixture
def registry(models_file):
    return load_registry(models_file)


@pytest.fixture
def settings(tmp_path, database_url, redis_server, models_file) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        redis_url=redis_server.url,
        models_file=models_file,
    )
