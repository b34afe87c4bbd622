"""Shared fixtures: an isolated project folder per test, the venv's own executables, closed proxies."""
import os, socket, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')
os.environ.setdefault('DO_NOT_TRACK', 'true')


def closed_port() -> int:
    "A loopback port nobody listens on."
    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()
    return port


def offline_env(**extra) -> dict:
    "The environment with every proxy pointed at a closed loopback port, so any network use fails."
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG')}
    env.update({'HTTP_PROXY': proxy, 'HTTPS_PROXY': proxy, 'http_proxy': proxy, 'https_proxy': proxy,
                'ALL_PROXY': proxy, 'NO_PROXY': '', 'no_proxy': ''})
    env.update(extra)
    return env


def run_cli(*args, cwd=None, env=None, timeout=600):
    "Run the `mlprod` console script as a subprocess."
    return subprocess.run([str(BIN / 'mlprod'), *map(str, args)], cwd=cwd, env=env or offline_env(),
                          capture_output=True, text=True, timeout=timeout)


_STORE_VARS = ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLFLOW_REGISTRY_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG')


@pytest.fixture(autouse=True)
def _keep_store_env():
    "A test that calls mlflow.set_tracking_uri (which writes os.environ) must not redirect the tests after it."
    saved = {k: os.environ.get(k) for k in _STORE_VARS}
    yield
    for k, v in saved.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


@pytest.fixture
def project(tmp_path, monkeypatch):
    "An empty project folder as the working folder, with a clean config cache."
    from mlprod.config import reset_config
    for k in ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG'): monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    reset_config()
    yield tmp_path
    reset_config()
