"""The registry on two backends: the embedded SQLite stores, and a real `mlflow server` on PostgreSQL (with the
mlprod database on PostgreSQL too). Same tests, two parametrizations; every process started here is stopped."""
import dataclasses, json, os, subprocess, sys, textwrap, threading, time, uuid
from pathlib import Path
import numpy as np, pandas as pd, pytest
from conftest import offline_env
from pg import start_mlflow_server

FEATURES = ['carrier', 'origin', 'dest', 'hour', 'dep_weekday', 'sched_dep_time', 'distance',
            'temp', 'dewp', 'humid', 'wind_dir', 'wind_speed', 'precip', 'pressure', 'visib']
CATS = ['carrier', 'origin', 'dest']
TIMINGS = {}


@pytest.fixture(scope='module')
def trained():
    "Two small LightGBM models on 3,000 January flights, and a held-out week."
    from mlprod.config import parse_config, DEFAULT_TOML
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    df = load_flights('2013-01-01', '2013-01-15').sample(3000, random_state=0).sort_values('time_hour').reset_index(drop=True)
    mc = dataclasses.replace(parse_config(DEFAULT_TOML).model('flights'), params={'n_estimators': 20, 'num_leaves': 7})
    m1 = train_lightgbm(df, mc)
    m2 = train_lightgbm(df, dataclasses.replace(mc, params={'n_estimators': 30, 'num_leaves': 15}))
    hold = load_flights('2013-01-15', '2013-01-22').sample(1500, random_state=1).reset_index(drop=True)
    return dict(df=df, m1=m1, m2=m2, hold=hold)


@pytest.fixture(scope='module')
def mlflow_server(postgres):
    srv = start_mlflow_server(postgres.create_database('mlflow'))
    yield srv
    srv.stop()


@pytest.fixture(scope='module')
def stores(request, tmp_path_factory):
    "Per backend kind, the environment that points a project at its stores (shared by the tests, one model name each)."
    cache = {}
    def get(kind):
        if kind not in cache:
            if kind == 'sqlite': cache[kind] = {'MLPROD_HOME': str(tmp_path_factory.mktemp('state'))}
            else:
                srv = request.getfixturevalue('mlflow_server'); pg = request.getfixturevalue('postgres')
                cache[kind] = {'MLFLOW_TRACKING_URI': srv.url, 'MLPROD_DB_URL': pg.create_database('mlprod')}
        return cache[kind]
    return get


@pytest.fixture(params=['sqlite', 'server'])
def backend(request, stores, tmp_path, monkeypatch):
    "A project folder whose stores are embedded SQLite, or an MLflow server on PostgreSQL plus a PostgreSQL mlprod database."
    from mlprod.config import reset_config, get_config
    for k in ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG'): monkeypatch.delenv(k, raising=False)
    env = stores(request.param)
    if request.param == 'server':
        for k in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY'): monkeypatch.delenv(k, raising=False)
    for k, v in env.items(): monkeypatch.setenv(k, v)
    monkeypatch.setenv('MLPROD_ACTOR', 'tester')
    monkeypatch.chdir(tmp_path)
    reset_config()
    cfg = get_config(tmp_path)
    yield dict(kind=request.param, root=tmp_path, cfg=cfg, env=env, name=f"flights_{uuid.uuid4().hex[:8]}")
    reset_config()


_BASE = {}

def _register(t, b, model='m1', **kw):
    "A new version of the test's model. The first of each kind per backend is logged for real; later ones reuse its artifacts."
    from mlprod import registry
    if kw: return registry.register(t[model], b['name'], t['df'], features=FEATURES, categorical=CATS, cfg=b['cfg'],
                                    target='delayed', time_column='time_hour', **kw)
    key = (b['kind'], model)
    if key not in _BASE:  # logged once per backend under a name no test moves or deletes
        _BASE[key] = registry.register(t[model], f"base_{model}_{uuid.uuid4().hex[:6]}", t['df'], features=FEATURES,
                                       categorical=CATS, cfg=b['cfg'], target='delayed', time_column='time_hour')
    client = registry._client(b['cfg'])
    src = client.get_model_version(_BASE[key].name, _BASE[key].version)
    try: client.get_registered_model(b['name'])
    except Exception: client.create_registered_model(b['name'])
    mv = client.create_model_version(b['name'], source=src.source, run_id=src.run_id, tags=dict(src.tags),
                                     model_id=getattr(src, 'model_id', None) or src.source.split('/')[-1])
    return registry._version_info(client.get_model_version(b['name'], mv.version))


def _rows(b):
    from mlprod import registry
    return list(registry.history(b['name'], cfg=b['cfg']))


def _production(b):
    from mlprod import registry
    return registry.resolve_version(b['name'], 'production', cfg=b['cfg'])


def _cli(b, *args, capsys=None):
    "Run `mlprod ARGS` in this process (the CLI as installed: no command added) and return (exit code, output)."
    from mlprod import cli
    rc = cli.main(['--project', str(b['root']), *map(str, args)])
    out = capsys.readouterr() if capsys else None
    return rc, (out.out + out.err) if out else ''


def _subprocess_env(b, **extra):
    env = offline_env(NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost', MLPROD_ACTOR='tester', **b['env'], **extra)
    env['PYTHONPATH'] = str(Path(__file__).resolve().parent.parent)
    return env


_CLI_CODE = ("import sys; from mlprod import cli\n"
             "sys.exit(cli.main(sys.argv[1:]))")


def test_register_lineage_load_and_pyfunc(trained, backend):
    "A version carries its lineage, schema and reference snapshot; load and pyfunc give the same scores as the model."
    import mlflow
    from mlprod import registry
    from mlprod.data import fingerprint
    b, t = backend, trained
    root = b['root']
    git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@example.invalid']
    subprocess.run(['git', 'init', '-q', str(root)], check=True)
    (root/'train.py').write_text('# the experiment\n')
    subprocess.run([*git, '-C', str(root), 'add', 'train.py'], check=True)
    subprocess.run([*git, '-C', str(root), 'commit', '-q', '-m', 'x'], check=True)
    head = subprocess.run(['git', '-C', str(root), 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    v = _register(t, b, window=('2013-01-01', '2013-01-15'), metrics={'roc_auc': 0.7}, params={'n_estimators': 20})
    assert v.version == '1'
    lin = v.lineage
    assert lin['window_start'].startswith('2013-01-01') and lin['window_end'].startswith('2013-01-15')
    assert lin['data_fingerprint'] == fingerprint(t['df'])
    assert lin['recipe'] == 'mlprod.recipes:train_lightgbm'
    assert json.loads(lin['params']) == {'n_estimators': 20} and json.loads(lin['metrics']) == {'roc_auc': 0.7}
    assert lin['git_commit'].startswith(head)
    assert lin['user'] == 'tester' and lin['mlprod_version'] not in ('', 'unknown')
    assert lin['train_rows'] == '3000' and lin['reference_rows'] == '3000'
    lm = registry.load(b['name'], '1', cfg=b['cfg'])
    X = t['hold'][FEATURES]
    expected = t['m1'].predict_proba(X)[:, 1]
    np.testing.assert_allclose(lm.predict_scores(t['hold']), expected, rtol=0, atol=1e-12)
    pf = mlflow.pyfunc.load_model(f"models:/{b['name']}/1")
    np.testing.assert_allclose(np.asarray(pf.predict(X)).ravel(), expected, rtol=0, atol=1e-12)
    ref = lm.reference()
    assert len(ref) == 3000 and {'delayed', 'time_hour', *FEATURES} <= set(ref.columns)
    assert lm.schema.names == FEATURES and lm.features == FEATURES and lm.categorical == CATS
    mv = mlflow.MlflowClient().get_model_version(b['name'], '1')
    assert mv.tags['mlprod.data_fingerprint'] == fingerprint(t['df'])


def test_acceptance_scenario(trained, backend, capsys):
    "Register two versions from the CLI, deploy v1, promote v1, promote v2 (gated), roll back: production is v1; history has every move."
    import mlflow, skops.io
    from mlprod import registry
    from mlprod.compare import compare
    b, t = backend, trained
    name, root = b['name'], b['root']
    t['df'].to_parquet(root/'train.parquet', index=False)
    from mlprod.config import mlflow_setup
    exp_id = mlflow_setup(b['cfg'])
    uris = []
    for k in ('m1', 'm2'):
        with mlflow.start_run(experiment_id=exp_id):
            info = mlflow.sklearn.log_model(t[k], name='model', pip_requirements=['scikit-learn', 'lightgbm'],
                                            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(t[k])))
        uris.append(info.model_uri)
    out = []
    def run(*a, expect=0):
        rc, text = _cli(b, *a, capsys=capsys)
        out.append(f"$ mlprod {' '.join(map(str, a))}\n{text.strip()}  (exit {rc})")
        assert rc == expect, text
        return text
    # the project's mlprod.toml names the features, so `register` from the CLI needs no more
    (root/'mlprod.toml').write_text(textwrap.dedent(f'''
        [models.{name}]
        target = "delayed"
        time_column = "time_hour"
        features = {json.dumps(FEATURES)}
        categorical = {json.dumps(CATS)}
        '''))
    from mlprod.config import reset_config; reset_config()
    assert 'registered' in run('register', name, '--model-uri', uris[0], '--train-data', root/'train.parquet',
                               '--window', '2013-01-01', '2013-01-15', '--metrics', '{"roc_auc": 0.70}')
    t['hold'].to_parquet(root/'hold.parquet')  # labelled rows v2 did not train on: its monitoring profile is built from them now
    assert 'version 2' in run('register', name, '--model-uri', uris[1], '--train-data', root/'train.parquet', '--holdout-data', root/'hold.parquet')
    from mlprod.profiles import stored_profile
    prof = stored_profile(registry.load(name, '2', b['cfg']), b['cfg'])
    assert (prof.meta['stored'], prof.meta['holdout_rows'], prof.calibration.source) == ('registration', len(t['hold']), 'holdout')
    run('models')
    run('deploy', name, 1)
    t0 = time.perf_counter(); run('promote', name, 1, '--to', 'production', '--reason', 'first model'); first = time.perf_counter() - t0
    blocked = run('promote', name, 2, '--to', 'production', '--reason', 'v2 looks better', expect=1)
    assert 'no comparison given' in blocked and _production(b) == '1'
    comparison = compare(t['m1'], t['m2'], t['hold'], 'delayed', n_boot=0, measure_ops=False, features=FEATURES,
                         champion_name=f"{name} v1", challenger_name=f"{name} v2", min_samples=100)
    rejected = dataclasses.replace(comparison, decision='reject', id=f"rej-{uuid.uuid4().hex[:6]}")
    registry.record_comparison(rejected, name, challenger_version=2, champion_version=1, cfg=b['cfg'])
    assert "decision is 'reject'" in run('promote', name, 2, '--reason', 'v2', '--decision', rejected.id, expect=1)
    approved = dataclasses.replace(comparison, decision='promote', id=f"ok-{uuid.uuid4().hex[:6]}")
    registry.record_comparison(approved, name, challenger_version=2, champion_version=1, cfg=b['cfg'])
    t0 = time.perf_counter(); run('promote', name, 2, '--reason', 'v2 passed the comparison', '--decision', approved.id)
    promote_s = time.perf_counter() - t0
    assert _production(b) == '2'
    t0 = time.perf_counter(); text = run('rollback', name, '--reason', 'error rate up after v2 went live'); rollback_s = time.perf_counter() - t0
    assert 'production v2 -> v1 (rollback' in text and _production(b) == '1'
    h = json.loads(run('history', name, '--json'))
    assert [(m['alias'], m['from_version'], m['to_version'], m['action']) for m in h] == [
        ('staging', None, '1', 'deploy'), ('production', None, '1', 'promote'), ('production', '1', '2', 'promote'),
        ('production', '2', '1', 'rollback')]
    assert [m['reason'] for m in h[1:]] == ['first model', 'v2 passed the comparison', 'error rate up after v2 went live']
    assert h[2]['decision_id'] == approved.id and all(m['actor'] == 'tester' and m['at'].endswith('+00:00') for m in h)
    run('history', name)
    # MLflow shows the same aliases and the history tag
    rm = mlflow.MlflowClient().get_registered_model(name)
    assert {k: str(v) for k, v in rm.aliases.items()} == {'staging': '1', 'production': '1'}
    assert [x['to'] for x in json.loads(rm.tags[registry.HISTORY_TAG])] == ['1', '1', '2', '1']
    text = run('card', name, 1)
    page = Path(text.split('wrote ')[-1].strip()).read_text()
    assert 'error rate up after v2 went live' in page and '<script' not in page and 'https://' not in page
    TIMINGS[b['kind']] = dict(first_promote_s=first, promote_s=promote_s, rollback_s=rollback_s)
    print(f"\n[{b['kind']}] promote {promote_s:.2f} s, rollback {rollback_s:.2f} s\n" + '\n'.join(out))
    if b['kind'] == 'sqlite':
        assert promote_s < 3 and rollback_s < 3  # target ≤ 1 s; loose bound for a loaded CI machine


@pytest.mark.parametrize('backend', ['sqlite'], indirect=True)  # the exit codes do not depend on the store
def test_console_script_exit_codes(trained, backend):
    "As a subprocess: a blocked promotion exits 1, a bad alias 2, and nothing moves."
    from mlprod import registry
    b, t = backend, trained
    _register(t, b); _register(t, b, 'm2')
    registry.promote(b['name'], 1, reason='first', cfg=b['cfg'])
    env = _subprocess_env(b)
    r = subprocess.run([sys.executable, '-c', _CLI_CODE, '--project', str(b['root']), 'promote', b['name'], '2', '--reason', 'x'],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and 'no comparison given' in r.stderr, r.stderr
    rc, _ = _cli(b, 'promote', b['name'], '2', '--to', 'prod', '--reason', 'x')
    assert rc == 2
    assert _production(b) == '1' and len(_rows(b)) == 1


def test_errors_change_nothing(trained, backend):
    "Every refused move leaves the aliases and the history as they were."
    import mlflow
    from mlprod import registry
    from mlprod.core import NotFoundError, ConfigError
    b, t = backend, trained
    name, cfg = b['name'], b['cfg']
    for k in ('m1', 'm2', 'm2'): _register(t, b, k)
    with pytest.raises(registry.RollbackError, match='production is not set'): registry.rollback(name, reason='x', cfg=cfg)
    registry.promote(name, 1, reason='first', cfg=cfg)
    state = lambda: (registry.resolve_version(name, 'production', cfg=cfg), registry.resolve_version(name, 'staging', cfg=cfg), len(_rows(b)))
    before = state()
    with pytest.raises(registry.RollbackError, match='no earlier production version'): registry.rollback(name, reason='x', cfg=cfg)
    with pytest.raises(NotFoundError, match='allowed: 1, 2, 3'): registry.rollback(name, reason='x', to=9, cfg=cfg)
    with pytest.raises(NotFoundError, match='not registered'): registry.rollback('no_such_model', reason='x', cfg=cfg)
    with pytest.raises(ConfigError, match="allowed: 'staging' or 'production'"): registry.promote(name, 2, to='canary', reason='x', cfg=cfg)
    with pytest.raises(ConfigError, match='reason'): registry.promote(name, 2, reason=' ', force=True, cfg=cfg)
    with pytest.raises(registry.PromotionBlocked, match='no comparison given'): registry.promote(name, 2, reason='x', cfg=cfg)
    with pytest.raises(registry.PromotionBlocked, match='no recorded comparison'): registry.promote(name, 2, reason='x', decision='nope', cfg=cfg)
    from mlprod.compare import compare
    c = compare(t['m1'], t['m2'], t['hold'], 'delayed', n_boot=0, measure_ops=False, features=FEATURES, min_samples=100)
    registry.record_comparison(dataclasses.replace(c, decision='promote', id='other'), name, challenger_version=3, champion_version=1, cfg=cfg)
    with pytest.raises(registry.PromotionBlocked, match='its challenger is version 3, not 2'):
        registry.promote(name, 2, reason='x', decision='other', cfg=cfg)
    unlabelled = dataclasses.replace(c, decision='promote', id='unlabelled')  # names 'champion'/'challenger' say no versions
    with pytest.raises(registry.PromotionBlocked, match='does not say which versions'): registry.promote(name, 2, reason='x', decision=unlabelled, cfg=cfg)
    assert state() == before
    # a deleted version cannot be a rollback target
    registry.promote(name, 2, reason='hotfix', force=True, cfg=cfg)
    mlflow.MlflowClient().delete_model_version(name, '1')
    before = state()
    with pytest.raises(NotFoundError, match="got '1'.*allowed: 2, 3"): registry.rollback(name, reason='x', cfg=cfg)
    assert state() == before
    # stale decision: compared against v1, production is v2 now
    registry.record_comparison(dataclasses.replace(c, decision='promote', id='stale'), name, challenger_version=3, champion_version=1, cfg=cfg)
    with pytest.raises(registry.PromotionBlocked, match='production is version 2 now'): registry.promote(name, 3, reason='x', decision='stale', cfg=cfg)
    assert state() == before
    assert _rows(b)[-1].forced is True


def test_failures_are_atomic(trained, backend, monkeypatch):
    "If MLflow refuses the alias, no history row; if recording fails, the alias is put back."
    from mlflow import MlflowClient
    from mlprod import registry
    b, t = backend, trained
    name, cfg = b['name'], b['cfg']
    _register(t, b); _register(t, b, 'm2')
    registry.promote(name, 1, reason='first', cfg=cfg)
    real = MlflowClient.set_registered_model_alias
    def refuse(self, *a, **kw): raise RuntimeError('registry unavailable')
    monkeypatch.setattr(MlflowClient, 'set_registered_model_alias', refuse)
    with pytest.raises(RuntimeError, match='registry unavailable'): registry.promote(name, 2, reason='x', force=True, cfg=cfg)
    monkeypatch.setattr(MlflowClient, 'set_registered_model_alias', real)
    assert _production(b) == '1' and len(_rows(b)) == 1
    monkeypatch.setattr(registry, '_FAIL_AFTER_ALIAS', RuntimeError('database full'))
    with pytest.raises(RuntimeError, match='database full'): registry.promote(name, 2, reason='x', force=True, cfg=cfg)
    monkeypatch.setattr(registry, '_FAIL_AFTER_ALIAS', None)
    assert _production(b) == '1' and len(_rows(b)) == 1
    assert registry.promote(name, 2, reason='now', force=True, cfg=cfg).to_version == '2'


def _assert_chain(b):
    "Moves are serialized: each starts where the previous one ended, and the alias equals the last move."
    rows = [m for m in _rows(b) if m.alias == 'production']
    for prev, cur in zip(rows, rows[1:]):
        assert cur.from_version == prev.to_version, (prev, cur)
    assert _production(b) == rows[-1].to_version
    return rows


def test_racing_threads(trained, backend):
    "Promotions racing in threads are serialized and none is lost."
    from mlprod import registry
    b, t = backend, trained
    for k in ('m1', 'm2', 'm1'): _register(t, b, k)
    registry.promote(b['name'], 1, reason='first', cfg=b['cfg'])
    ok, errors = [], []
    def worker(i):
        for j in range(3):
            v = str((i + j) % 3 + 1)
            try: ok.append(registry.promote(b['name'], v, reason=f"thread {i} step {j}", force=True, cfg=b['cfg']))
            except registry.RegistryError as e: errors.append(str(e))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads: th.start()
    for th in threads: th.join(120)
    assert all('already production' in e for e in errors), errors
    rows = _assert_chain(b)
    assert len(rows) == 1 + len(ok) and len(ok) >= 4


def test_racing_processes(trained, backend):
    "Promotions racing in separate processes are serialized and none is lost."
    from mlprod import registry
    b, t = backend, trained
    for k in ('m1', 'm2', 'm1'): _register(t, b, k)
    registry.promote(b['name'], 1, reason='first', cfg=b['cfg'])
    code = textwrap.dedent(f"""
        import sys
        from mlprod import registry
        registry.resolve_version({b['name']!r}, cfg={str(b['root'])!r})  # imports and connections done before the race
        print('ready', flush=True); sys.stdin.readline()
        i = int(sys.argv[1]); ok = 0
        for j in range(5):
            try: registry.promote({b['name']!r}, str((i + j) % 3 + 1), reason=f"process {{i}} step {{j}}", force=True, cfg={str(b['root'])!r}); ok += 1
            except registry.RegistryError as e: assert 'already production' in str(e), e
        print(ok)
        """)
    env = _subprocess_env(b)
    procs = [subprocess.Popen([sys.executable, '-c', code, str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    try:
        for p in procs: assert p.stdout.readline().strip() == 'ready', p.stderr.read()[-2000:]
        for p in procs: p.stdin.write('go\n'); p.stdin.flush()
        oks = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-2000:]
            oks.append(int(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None: p.kill(); p.wait()
    rows = _assert_chain(b)
    assert len(rows) == 1 + sum(oks) and sum(oks) >= 4
