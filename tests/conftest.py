"""Shared fixtures and helpers, defined once for every test module: the 2013 `flights` data, a `postgres` server,
`free_port`, an isolated `project` folder, the venv's own executables, closed proxies, and the check that a Debian
package `make system-deps` installs is present (a test that needs a missing one fails and names the target)."""
import os, subprocess, sys
from pathlib import Path
import pytest
from pg import MISSING_POSTGRES, free_port, pg_bin, start_postgres

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
os.environ.setdefault('MLFLOW_DISABLE_TELEMETRY', 'true')
os.environ.setdefault('DO_NOT_TRACK', 'true')


def offline_env(**extra) -> dict:
    "The environment with every proxy pointed at a closed loopback port, so any network use fails."
    proxy = f"http://127.0.0.1:{free_port()}"
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


def project_folder(tmp_path_factory, name:str, files:dict):
    """A module-scoped project folder holding `files` (name -> text) as the working folder and first on sys.path, with
    no store variable of the environment; returns (root, MonkeyPatch): call `.undo()` when the module is done."""
    mp = pytest.MonkeyPatch()
    for k in _STORE_VARS: mp.delenv(k, raising=False)
    root = tmp_path_factory.mktemp(name)
    for fname, text in files.items(): (root / fname).write_text(text, encoding='utf-8')
    mp.chdir(root); mp.syspath_prepend(str(root))
    for fname in files:  # this project's modules, not a same-named one another test module imported in this worker
        if fname.endswith('.py'): sys.modules.pop(fname[:-3], None)
    return root, mp


@pytest.fixture
def project(tmp_path, monkeypatch):
    "An empty project folder as the working folder, with a clean config cache."
    from mlprod.config import reset_config
    for k in ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG'): monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    reset_config()
    yield tmp_path
    reset_config()


def require_system_package(found, # the package's file or folder (None/False when missing)
                           message:str, # what is missing; the hint to run `make system-deps` is part of it
                          ):
    "Fail the test (not skip it) when a Debian package that `make system-deps` installs is missing."
    if not found: pytest.fail(message, pytrace=False)


CHROMIUM = '/usr/bin/chromium'  # Debian's package, installed by `make system-deps`; Playwright downloads no browser
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync']
SHOTS = ROOT/'reports'/'screenshots'  # screenshots for a person to look at (git-ignored)


@pytest.fixture(scope='module')
def browser():
    "Headless Chromium from Debian, driven by Playwright (no browser download); one per test module."
    require_system_package(Path(CHROMIUM).exists(), f"Chromium is not installed ({CHROMIUM}): run `make system-deps` (as root)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def open_offline(browser, path:Path, shot:str, script:str='null'):
    "Open file `path` offline and screenshot it to SHOTS/shot: (body text, console errors, non-file requests, `script`'s value)."
    ctx = browser.new_context(viewport={'width': 1280, 'height': 900}, offline=True)
    page = ctx.new_page()
    errors, foreign = [], []
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.on('request', lambda r: foreign.append(r.url) if not r.url.startswith(('file://', 'data:', 'blob:', 'about:')) else None)
    page.goto(path.as_uri(), wait_until='load')
    page.wait_for_timeout(300)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS/shot), full_page=True)
    text, value = page.inner_text('body'), page.evaluate(script)
    ctx.close()
    return text, errors, foreign, value


@pytest.fixture(scope='session')
def flights():
    "Every 2013 flight (UTC) as `mlprod.data.load_flights` gives them: weather joined, `delayed` label; shared, do not modify."
    from mlprod.data import load_flights
    return load_flights('2013-01-01', '2014-01-01')


def window(df, # a frame with a UTC `time_hour` column, such as the `flights` fixture
           start:str, # first day, included (UTC)
           end:str, # day after the last, excluded (UTC)
          ):
    "The rows of `df` scheduled in [start, end) (UTC), indexed from 0: what `load_flights(start, end)` returns."
    import pandas as pd
    t = df['time_hour']
    return df[(t >= pd.Timestamp(start, tz='UTC')) & (t < pd.Timestamp(end, tz='UTC'))].reset_index(drop=True)


@pytest.fixture(scope='session')
def postgres():
    "A PostgreSQL server for the session (one per xdist worker); `postgres.create_database(name)` gives a URL."
    require_system_package(pg_bin(), MISSING_POSTGRES)
    pg = start_postgres()
    yield pg
    pg.stop()


# With `pytest -n N` (pytest-xdist; `make test` uses 2 workers) a unit of work is a module, so its module fixtures
# are built once, or a group of modules that share state across modules (below). xdist's own `--dist loadgroup`
# cannot be used: with pytest 9 its `xdist_group` marks are ignored (it renames `item._nodeid`, which pytest 9 no
# longer reads). Units are handed out longest first (HEAVY_FIRST, then collection order) as workers free up.
SHARED_GROUPS = {'test_serve': 'serve-store', 'test_serve_load': 'serve-store',  # the `store` model project on disk
                 'test_runbooks': 'runbook-sandbox', 'test_readiness': 'runbook-sandbox'}  # `built_sandbox`
HEAVY_FIRST = ['test_your_model', 'test_docs', 'runbook-sandbox', 'test_readme', 'serve-store', 'test_jobs', 'test_canary',
               'test_spark', 'test_labels', 'test_batch', 'test_airflow', 'test_registry', 'test_optimize', 'test_monitor',
               'test_plugin', 'test_jupyterlab', 'test_reports_browser', 'test_dashboard_browser', 'test_evaluate',
               'test_signals', 'test_alerts', 'test_sequential']


def work_unit(nodeid:str) -> str:
    "The unit of work of test `nodeid` under xdist: its module's name, or its SHARED_GROUPS group."
    stem = Path(nodeid.split('::', 1)[0]).stem
    return SHARED_GROUPS.get(stem, stem)


def pytest_collection_modifyitems(config, items):
    "Order the tests so the heaviest units of work come first (stable: the order inside a unit is kept)."
    rank = {u: i for i, u in enumerate(HEAVY_FIRST)}
    items[:] = sorted(items, key=lambda it: rank.get(work_unit(it.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    "xdist's scheduler by scope, with `work_unit` as the scope, in the order of the collection."
    from xdist.scheduler import LoadScopeScheduling
    class WorkUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid): return work_unit(nodeid)
    config.option.loadscopereorder = False  # keep HEAVY_FIRST (xdist would order by number of tests)
    return WorkUnits(config, log)


def production_flights(tmp_path_factory, flights, name:str):
    "A project folder with a small production flights model trained on January 2013 (20k rows, 40 trees): yields (cfg, model)."
    from mlprod.config import DEFAULT_TOML, get_config, reset_config, ensure_state
    from mlprod import registry
    from mlprod.recipes import train_lightgbm
    toml = DEFAULT_TOML.replace('n_estimators = 200', 'n_estimators = 40').replace('reference_sample = 100000', 'reference_sample = 20000')
    root, mp = project_folder(tmp_path_factory, name, {'mlprod.toml': toml})
    reset_config()
    cfg = ensure_state(get_config(root))
    train = window(flights, '2013-01-01', '2013-02-01').sample(20_000, random_state=0).sort_values('time_hour').reset_index(drop=True)
    model = train_lightgbm(train, cfg.model('flights'))
    v = registry.register(model, 'flights', train, window=('2013-01-01', '2013-02-01'), cfg=cfg)
    registry.promote('flights', v.version, reason=f'{name} tests', force=True, cfg=cfg)
    yield cfg, model
    reset_config(); mp.undo()


def flight_rows(flights, start, end):
    "The flights of [start, end) with an integer id column `flight_id` (unique across windows)."
    import numpy as np, pandas as pd
    return window(flights, start, end).assign(flight_id=lambda d: np.arange(len(d)) + int(pd.Timestamp(start).strftime('%Y%m%d')) * 100_000)
