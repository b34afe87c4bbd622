"""The scoring service as users run it: real uvicorn processes on loopback, a real MLflow store, the request log on disk."""
import dataclasses, json, math, os, signal, sqlite3, subprocess, sys, threading, time
from pathlib import Path

import httpx, numpy as np, pandas as pd, pytest

from conftest import free_port, offline_env, project_folder

FEATURES = ['carrier', 'origin', 'dest', 'hour', 'dep_weekday', 'sched_dep_time', 'distance',
            'temp', 'dewp', 'humid', 'wind_dir', 'wind_speed', 'precip', 'pressure', 'visib']
TOKEN = 'test-token-0123456789'


class Server:
    "`mlprod.serve.serve` in its own process on a free loopback port."
    def __init__(self, project, name='flights', alias='production', shadow=None, token_env=None, env=None, log=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (f"from mlprod.serve import serve; serve({name!r}, {alias!r}, port={self.port}, shadow={shadow!r}, "
                f"token_env={token_env!r}, project={str(project)!r})")
        self.log = open(log or Path(project) / f"server-{self.port}.log", 'w')
        self.proc = subprocess.Popen([sys.executable, '-c', code], env=offline_env(**(env or {})), cwd=str(project),
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=120):
        t0 = time.time()
        with httpx.Client(trust_env=False) as c:
            while time.time() - t0 < timeout:
                if self.proc.poll() is not None: raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-3000:]}")
                try:
                    if c.get(self.url + '/health', timeout=2).status_code == 200: return self
                except httpx.TransportError: pass
                time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self):
        "Graceful stop (SIGTERM): flushes the request log."
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try: self.proc.wait(60)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        if not self.log.closed: self.log.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None: self.proc.kill(); self.proc.wait()
        if not self.log.closed: self.log.close()


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    "A project with model `flights`: version 1 (production) and version 2 (staging), trained on real flights (built once per session)."
    from mlprod.config import get_config
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod import registry
    home = tmp_path_factory.getbasetemp() / 'serve-store'
    home.mkdir(exist_ok=True)
    cfg = get_config(str(home))
    if not (home / 'versions.json').exists():
        mc = dataclasses.replace(cfg.model('flights'), params={'n_estimators': 40})
        jan, feb = load_flights('2013-01-01', '2013-01-15').iloc[:3000], load_flights('2013-02-01', '2013-02-15').iloc[:3000]
        v1 = registry.register(train_lightgbm(jan, mc), 'flights', jan, cfg=cfg).version
        v2 = registry.register(train_lightgbm(feb, mc), 'flights', feb, cfg=cfg).version
        _set_alias(cfg, 'production', v1)
        registry.deploy('flights', v2, to='staging', cfg=cfg)
        (home / 'versions.json').write_text(json.dumps([v1, v2]))
    v1, v2 = json.loads((home / 'versions.json').read_text())
    assert registry.resolve_version('flights', 'production', cfg=cfg) == v1
    rows = load_flights('2013-03-01', '2013-03-02')[FEATURES].iloc[:200].reset_index(drop=True)
    import mlflow
    mlflow.set_tracking_uri(cfg.tracking_uri); mlflow.set_registry_uri(cfg.tracking_uri)
    py1, py2 = mlflow.pyfunc.load_model(f'models:/flights/{v1}'), mlflow.pyfunc.load_model(f'models:/flights/{v2}')
    return dict(home=home, cfg=cfg, v1=v1, v2=v2, rows=rows,
                score1=lambda df: np.asarray(py1.predict(df[FEATURES])).ravel(),
                score2=lambda df: np.asarray(py2.predict(df[FEATURES])).ravel())


def _set_alias(cfg, alias, version, reason='test'):
    "Move `alias` with the registry's own verbs (promote/rollback when they exist)."
    from mlprod import registry
    if alias == 'production': return registry.promote('flights', version, to='production', reason=reason, force=True, cfg=cfg)
    if alias == 'staging': return registry.deploy('flights', version, to='staging', reason=reason, cfg=cfg)
    raise ValueError(f"alias: got {alias!r}; allowed: 'production' or 'staging'")


def _records(df): return json.loads(df.to_json(orient='records'))


def _db_rows(url, where=''):
    path = url.split('///', 1)[1]
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try: return [dict(r) for r in con.execute(f"select * from requests {where}")]
    finally: con.close()


class Tally:
    "Responses seen by the clients of a test, by status."
    def __init__(self): self.by_status, self.lock = {}, threading.Lock()
    def add(self, status):
        with self.lock: self.by_status[status] = self.by_status.get(status, 0) + 1


@pytest.fixture(scope='module')
def servers(store):
    "Two servers started together (each takes seconds to import and load): s1 and s2 below."
    db_url = f"sqlite:///{store['home']}/s1.db"
    s1 = Server(store['home'], shadow='staging', token_env='MLPROD_TEST_TOKEN', env={'MLPROD_TEST_TOKEN': TOKEN, 'MLPROD_DB_URL': db_url})
    s2 = Server(store['home'])
    s1.db_url = db_url
    try: yield s1.wait_ready(), s2.wait_ready()
    finally: s1.kill(); s2.kill()


@pytest.fixture(scope='module')
def s1(servers):
    "The production model with staging in the shadow, a bearer token and its own request log."
    srv = servers[0]
    srv.tally = Tally()
    srv.client = httpx.Client(base_url=srv.url, trust_env=False, timeout=30, headers={'Authorization': f'Bearer {TOKEN}'})
    yield srv
    srv.client.close(); srv.stop()


def post(srv, **kw):
    r = srv.client.post('/invocations', **kw)
    srv.tally.add(r.status_code)
    return r


def test_every_payload_form_matches_mlflow_pyfunc(store, s1):
    df = store['rows'].iloc[:25]
    want = store['score1'](df)
    recs = _records(df)
    split = json.loads(df.to_json(orient='split', index=False))
    forms = {'dataframe_split': {'json': {'dataframe_split': split}},
             'dataframe_records': {'json': {'dataframe_records': recs}},
             'instances': {'json': {'instances': recs}},
             'inputs (records)': {'json': {'inputs': recs}},
             'inputs (columns)': {'json': {'inputs': {c: df[c].tolist() for c in FEATURES}}},
             'csv': {'content': df.to_csv(index=False).encode(), 'headers': {'Content-Type': 'text/csv'}}}
    for form, kw in forms.items():
        r = post(s1, **kw)
        assert r.status_code == 200, (form, r.text)
        got = np.array(r.json()['predictions'])
        assert got.shape == (25,), form
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=form)
    # one row, the common case, through the fast path
    r = post(s1, json={'dataframe_records': recs[:1]})
    assert abs(r.json()['predictions'][0] - want[0]) < 1e-9
    v = s1.client.get('/version').json()
    assert (v['name'], v['version'], v['alias'], v['scorer']) == ('flights', store['v1'], 'production', 'fast')
    assert r.headers['x-model-version'] == store['v1'] and len(r.headers['x-request-id']) == 32


def _bad_cases(good, schema):
    """(name, request kwargs, expected status, a phrase the message must contain[, kind]): with a kind, a value the
    flights model can score; it is refused (the status and phrase) under unseen_categories = "reject" only."""
    g = dict(good)
    non_null_num = next(c.name for c in schema.columns if c.kind == 'numeric' and not c.nullable)
    big = json.dumps({'dataframe_records': [g] * 50000}).encode()
    assert len(big) > 10 * 2**20
    def rec(**kw): return {'json': {'dataframe_records': [{**g, **kw}]}}
    def raw(s, ct='application/json'): return {'content': s if isinstance(s, bytes) else s.encode(), 'headers': {'Content-Type': ct}}
    no_dest = {k: v for k, v in g.items() if k != 'dest'}
    renamed = {('Carrier' if k == 'carrier' else k): v for k, v in g.items()}
    def chunks():
        for _ in range(12): yield b' ' * 2**20
    return [
        ('missing column', {'json': {'dataframe_records': [no_dest]}}, 422, "'dest' is missing"),
        ('extra column', rec(tail_number='N123'), 422, "'tail_number' is not a column of this model"),
        ('renamed column', {'json': {'dataframe_records': [renamed]}}, 422, "'carrier' is missing"),
        ('string in numeric', rec(hour='seven'), 422, "'hour' has 1 value(s) of the wrong type"),
        ('number as string', rec(distance='1400'), 422, "'distance' has 1 value(s) of the wrong type"),
        ('boolean in numeric', rec(temp=True), 422, "'temp' has 1 value(s) of the wrong type"),
        ('NaN where not allowed', raw(json.dumps({'dataframe_records': [{**g, non_null_num: float('nan')}]})), 422, f"'{non_null_num}' has 1 missing value", 'null'),
        ('null where not allowed', rec(**{non_null_num: None}), 422, f"'{non_null_num}' has 1 missing value", 'null'),
        ('infinity', raw(json.dumps({'dataframe_records': [{**g, 'temp': float('inf')}]})), 422, "'temp' has 1 infinite value"),
        ('minus infinity', raw(json.dumps({'dataframe_records': [{**g, 'pressure': float('-inf')}]})), 422, "'pressure' has 1 infinite value"),
        ('out of range', rec(distance=1e9), 422, "'distance' has 1 value(s) out of range", 'out_of_range'),
        ('unseen category', rec(carrier='ZZ'), 422, "'carrier' has 1 unseen value(s), e.g. 'ZZ'", 'unseen_category'),
        ('number as category', rec(carrier=5), 422, "'carrier' has 1 unseen value(s)", 'unseen_category'),
        ('nested object in numeric', rec(temp={'value': 3}), 422, "'temp' has 1 value(s) of the wrong type"),
        ('nested list in categorical', rec(origin=['JFK']), 422, "'origin' has 1 value(s) of the wrong type"),
        ('unicode value', rec(dest='Zürich ✈'), 422, "'dest' has 1 unseen value(s), e.g. 'Zürich ✈'", 'unseen_category'),
        ('unicode column', rec(**{'✈': 1}), 422, "'✈' is not a column of this model"),
        ('empty rows', {'json': {'dataframe_records': []}}, 422, 'has no rows'),
        ('empty body', raw(b''), 400, 'body: empty'),
        ('malformed JSON', raw('{"dataframe_records": [{"hour": 5,}]}'), 400, 'not valid JSON'),
        ('JSON array', raw('[1, 2, 3]'), 400, 'got a JSON list'),
        ('unknown key', {'json': {'data': [g]}}, 400, "got keys ['data']"),
        ('two forms', {'json': {'instances': [g], 'inputs': [g]}}, 400, 'exactly one of the keys'),
        ('ragged split', {'json': {'dataframe_split': {'columns': list(g), 'data': [[1, 2]]}}}, 400, f'a list of {len(g)} values'),
        ('list of lists', {'json': {'instances': [list(g.values())]}}, 400, 'row objects that name their columns'),
        ('deeply nested', raw(b'{"inputs": ' + b'[' * 50000 + b']' * 50000 + b'}'), 400, 'nested too deeply'),
        ('invalid UTF-8', raw(b'{"inputs": "\xff\xfe"}'), 400, 'not UTF-8'),
        ('ragged CSV', raw('hour,temp\n1\n', 'text/csv'), 400, 'CSV line 2'),
        ('text in CSV number', raw(pd.DataFrame([{**g, 'hour': 'x'}]).to_csv(index=False), 'text/csv'), 422, "'hour' has 1 value(s) of the wrong type"),
        ('wrong content type', raw('hello', 'text/plain'), 415, "got 'text/plain'; allowed: application/json or text/csv"),
        ('no content type', {'content': b'{}', 'headers': {'Content-Type': ''}}, 415, 'allowed: application/json or text/csv'),
        ('huge body', raw(big), 413, 'allowed: at most 10,485,760 bytes'),
        ('huge streamed body', {'content': chunks(), 'headers': {'Content-Type': 'application/json'}}, 413, 'more than 10,485,760 bytes'),
        ('bad event time', {'json': {'dataframe_records': [g]}, 'headers': {'X-Event-Time': 'last tuesday'}}, 400, 'X-Event-Time'),
        ('no token', {'json': {'dataframe_records': [g]}, 'headers': {'Authorization': ''}}, 401, 'Authorization'),
        ('wrong token', {'json': {'dataframe_records': [g]}, 'headers': {'Authorization': 'Bearer nope-nope-nope'}}, 401, 'Authorization'),
        ('token without Bearer', {'json': {'dataframe_records': [g]}, 'headers': {'Authorization': TOKEN}}, 401, 'Authorization'),
    ]


def test_bad_input_battery_gives_useful_4xx_and_the_server_keeps_serving(store, s1):
    "Under the default (auto: the flights model scores unseen values), what the model can handle is scored and flagged."
    from mlprod import registry
    schema = registry.load('flights', store['v1'], cfg=store['cfg']).schema
    good = _records(store['rows'].iloc[:1])[0]
    cases = _bad_cases(good, schema)
    assert len(cases) >= 37
    scored = {}
    for name, kw, status, phrase, *kind in cases:
        if kind:
            rid = f"scored-{len(scored)}"
            r = post(s1, **{**kw, 'headers': {**kw.get('headers', {}), 'X-Request-ID': rid}})
            assert r.status_code == 200, (name, r.status_code, r.text[:500])
            assert all(math.isfinite(p) for p in r.json()['predictions']), name
            scored[rid] = (name, kind[0])
            continue
        r = post(s1, **kw)
        assert r.status_code == status, (name, r.status_code, r.text[:500])
        body = r.json()
        assert phrase in body['message'] + json.dumps(body.get('violations', []), ensure_ascii=False), (name, body)
        assert 'Traceback' not in r.text and 'File "' not in r.text, name
        if status == 422: assert all({'column', 'kind', 'value', 'allowed', 'message'} <= set(v) for v in body['violations']), name
        ok = post(s1, json={'dataframe_records': [good]})
        assert ok.status_code == 200, (name, 'good request afterwards', ok.text)
    for method, path, status in [('GET', '/invocations', 405), ('POST', '/predict', 404), ('DELETE', '/ping', 405)]:
        r = s1.client.request(method, path)
        assert r.status_code == status and r.json()['error'] in ('method_not_allowed', 'not_found'), (method, path, r.text)
    # an unseen value is scored as the model itself scores it, and the log records which column held it
    row = {**good, 'dest': 'XYZ'}
    r = post(s1, json={'dataframe_records': [row]}, headers={'X-Request-ID': 'scored-dest'})
    assert abs(r.json()['predictions'][0] - store['score1'](pd.DataFrame([row]))[0]) < 1e-9
    time.sleep(1.5)  # > flush interval
    logged = {r['request_id']: r for r in _db_rows(s1.db_url, "where request_id like 'scored-%'")}
    assert json.loads(logged['scored-dest']['unseen']) == {'dest': [0]}
    for rid, (name, kind) in scored.items():
        assert (logged[rid]['unseen'] is not None) == (kind == 'unseen_category'), (name, logged[rid]['unseen'])
    m = s1.client.get('/metrics').text
    assert 'mlprod_flagged_values_total{column="carrier",kind="unseen_category"} 2.0' in m and 'kind="out_of_range"' in m, m[-2000:]


def test_reject_refuses_what_the_model_could_score_and_says_why(store):
    "unseen_categories = 'reject': the same values are 422s that name the column, the value, what is allowed and the setting."
    import warnings
    from mlprod import registry
    from mlprod.serve import create_app, StaticProvider
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from starlette.testclient import TestClient
    loaded = registry.load('flights', store['v1'], cfg=store['cfg'])
    good = _records(store['rows'].iloc[:1])[0]
    app = create_app('flights', provider=StaticProvider(loaded, unseen='reject'), log_requests=False)
    n = 0
    with TestClient(app) as c:
        assert c.get('/version').json()['unseen_categories'] == 'reject'
        for name, kw, status, phrase, *kind in _bad_cases(good, loaded.schema):
            if not kind: continue
            r = c.post('/invocations', **kw); n += 1
            assert r.status_code == status, (name, r.status_code, r.text[:500])
            v = r.json()['violations']
            assert phrase in json.dumps(v, ensure_ascii=False) and v[0]['kind'] == kind[0], (name, v)
            if kind[0] == 'unseen_category': assert 'unseen_categories in [models.flights] is "reject"' in v[0]['message'], v
    assert n == 6


def test_shadow_is_logged_never_returned(store, s1):
    df = store['rows'].iloc[50:60]
    ids = [f'shadow-{i}' for i in range(len(df))]
    for i, rid in enumerate(ids):
        r = post(s1, json={'instances': _records(df.iloc[[i]])}, headers={'X-Request-ID': rid})
        assert r.headers['x-request-id'] == rid
        assert set(r.json()) == {'predictions'}
        assert abs(r.json()['predictions'][0] - store['score1'](df.iloc[[i]])[0]) < 1e-9
    assert s1.client.get('/version').json()['shadow']['version'] == store['v2']
    time.sleep(1.5)  # > flush interval
    rows = {r['request_id']: r for r in _db_rows(s1.db_url, "where request_id like 'shadow-%'")}
    assert sorted(rows) == sorted(ids)
    np.testing.assert_allclose([json.loads(rows[i]['shadow_predictions'])[0] for i in ids], store['score2'](df), atol=1e-9)
    np.testing.assert_allclose([json.loads(rows[i]['predictions'])[0] for i in ids], store['score1'](df), atol=1e-9)
    assert {r['shadow_version'] for r in rows.values()} == {store['v2']}


def test_event_time_labels_and_metrics(store, s1):
    df = store['rows'].iloc[100:103]
    r = post(s1, json={'dataframe_split': json.loads(df.to_json(orient='split', index=False))},
             headers={'X-Event-Time': '2013-03-01T06:00:00-05:00', 'X-Request-ID': 'evt-1'})
    assert r.status_code == 200
    m = s1.client.get('/metrics').text
    assert 'mlprod_requests_total{status="200"}' in m and 'mlprod_requests_total{status="422"}' in m
    assert f'mlprod_model_version{{alias="production",model="flights",role="served"}} {float(store["v1"])}' in m
    assert 'mlprod_request_latency_seconds_bucket' in m and 'mlprod_prediction_bucket{le="0.5"}' in m
    assert s1.client.get('/ping').status_code == 200 and s1.client.get('/health').json()['status'] == 'ready'
    time.sleep(1.5)
    row = _db_rows(s1.db_url, "where request_id = 'evt-1'")[0]
    assert row['n_rows'] == 3 and row['event_time'].startswith('2013-03-01 11:00:00')
    assert [r[c] for r in json.loads(row['features']) for c in ('carrier',)] == df['carrier'].tolist()
    p = store['home'] / 'labels.csv'
    pd.DataFrame({'request_id': ['evt-1'] * 3, 'row': [2, 0, 1], 'label': [1, 0, 0]}).to_csv(p, index=False)
    from mlprod import cli
    assert cli.COMMANDS['labels'][0] == 'mlprod.requestlog'
    os.environ['MLPROD_DB_URL'] = s1.db_url
    try: assert cli.main(['--project', str(store['home']), 'labels', 'ingest', str(p)]) == 0
    finally: del os.environ['MLPROD_DB_URL']
    from mlprod.requestlog import log_labels, decode_labels
    assert log_labels(['shadow-0', 'shadow-1'], ['yes', False], db_url=s1.db_url).n_unknown == 0  # labels of any type
    con = sqlite3.connect(s1.db_url.split('///', 1)[1])
    got = dict(con.execute("select request_id, labels from labels").fetchall())
    con.close()
    assert (decode_labels(got['evt-1']), decode_labels(got['shadow-0']), decode_labels(got['shadow-1'])) == ([0, 0, 1], ['yes'], [False])


def test_request_log_rows_equal_responses(store, s1):
    "After a graceful stop, the log holds one row per 2xx response and one per refused request."
    s1.stop()
    rows = _db_rows(s1.db_url)
    by_status = {}
    for r in rows: by_status[r['status']] = by_status.get(r['status'], 0) + 1
    seen = {k: v for k, v in s1.tally.by_status.items() if k not in (404, 405)}
    assert by_status == seen
    ok = [r for r in rows if r['status'] == 200]
    assert all(r['predictions'] and r['features'] and r['error'] is None for r in ok)
    assert sum(r['unseen'] is not None for r in ok) >= 4  # 3 scored cases of the battery + the unseen destination (and any in the March rows)
    assert all(r['predictions'] is None and r['error'] for r in rows if r['status'] >= 400)


def _hammer(url, rows, stop, out, n_threads=4, prefix=None, headers=None):
    "Clients sending single rows until `stop` is set; each result is (request id, status, version, prediction, row, t)."
    recs = _records(rows)
    def run(k):
        with httpx.Client(base_url=url, trust_env=False, timeout=30, headers=headers or {}) as c:
            i = 0
            while not stop.is_set():
                j = (k * 7919 + i) % len(recs)
                h = {'X-Request-ID': f'{prefix}-{k}-{i}'} if prefix else {}
                try:
                    r = c.post('/invocations', json={'dataframe_records': [recs[j]]}, headers=h)
                    pred = r.json()['predictions'][0] if r.status_code == 200 else None
                    out.append((r.headers.get('x-request-id'), r.status_code, r.headers.get('x-model-version'), pred, j, time.time()))
                except httpx.TransportError as e: out.append((None, type(e).__name__, None, None, j, time.time()))
                i += 1
    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n_threads)]
    for t in ts: t.start()
    return ts


def _wait_version(url, version, timeout=10):
    t0 = time.time()
    with httpx.Client(trust_env=False) as c:
        while time.time() - t0 < timeout:
            if c.get(url + '/version').json()['version'] == version: return time.time() - t0
            time.sleep(0.05)
    raise AssertionError(f"/version did not show {version} within {timeout} s")


@pytest.fixture(scope='module')
def s2(servers):
    "The production model, no token, the project's request log; the kill -9 test ends it."
    return servers[1]


def test_hot_reload_under_load(store, s2):
    cfg, v1, v2, srv = store['cfg'], store['v1'], store['v2'], s2
    stop, out = threading.Event(), []
    try:
        threads = _hammer(srv.url, store['rows'], stop, out)
        time.sleep(1.5)
        _set_alias(cfg, 'production', v2, 'hot reload test: promote')
        up = _wait_version(srv.url, v2)
        time.sleep(1.5)
        from mlprod import registry
        registry.rollback('flights', reason='hot reload test: roll back', cfg=cfg)
        down = _wait_version(srv.url, v1)
        time.sleep(1.0)
        stop.set()
        for t in threads: t.join(30)
    finally: stop.set()
    statuses = {o[1] for o in out}
    assert statuses == {200}, statuses
    assert up <= 5 and down <= 5, (up, down)
    versions = [o[2] for o in out]
    assert versions.count(v2) > 10 and versions[-1] == v1
    # each answer came from the version it names
    rows = store['rows']
    for ver, score in ((v1, store['score1']), (v2, store['score2'])):
        got = [(o[3], o[4]) for o in out if o[2] == ver]
        np.testing.assert_allclose([g for g, _ in got], score(rows.iloc[[j for _, j in got]]), atol=1e-9)
    print(f"\nhot reload: {len(out)} requests, 0 failed; switch to v{v2} seen after {up:.2f} s, back to v{v1} after {down:.2f} s")


def test_kill_9_mid_load_loses_at_most_the_flush_interval(store, s2):
    cfg, srv = store['cfg'], s2
    stop, out = threading.Event(), []
    threads = _hammer(srv.url, store['rows'], stop, out, prefix='k9')
    time.sleep(3)
    kill_at = time.time()
    srv.kill()
    stop.set()
    for t in threads: t.join(30)
    acked = {o[0]: o[5] for o in out if o[1] == 200}
    con = sqlite3.connect(cfg.db_url.split('///', 1)[1])
    assert con.execute('pragma integrity_check').fetchone()[0] == 'ok'
    logged = {r[0] for r in con.execute("select request_id from requests where request_id like 'k9-%'")}
    con.close()
    lost = [rid for rid in acked if rid not in logged]
    assert logged <= set(acked)
    # the writer commits within flush_interval (0.5 s) plus one write; allow 0.5 s more for scheduling
    late = [rid for rid in lost if acked[rid] < kill_at - 1.0]
    assert not late, f"{len(late)} rows acknowledged more than 1 s before the kill were lost"
    print(f"\nkill -9: {len(acked)} acknowledged, {len(lost)} lost (all in the last second before the kill)")
    srv2 = Server(store['home']).wait_ready()
    try:
        with httpx.Client(base_url=srv2.url, trust_env=False) as c:
            r = c.post('/invocations', json={'dataframe_records': _records(store['rows'].iloc[:1])}, headers={'X-Request-ID': 'after-restart'})
            assert r.status_code == 200
    finally: srv2.stop()
    assert len(_db_rows(cfg.db_url, "where request_id = 'after-restart'")) == 1


# --- every task over HTTP (multiclass, string labels) and MLflow's readiness and content-type cases ---

TASK_SRC = '''
import numpy as np, pandas as pd
from sklearn import datasets

def _timed(df):
    df = df.sample(frac=1, random_state=0).reset_index(drop=True)
    return df.assign(seen=pd.date_range('2024-01-01', periods=len(df), freq='h', tz='UTC'))

def wine():
    d = datasets.load_wine(as_frame=True)
    return _timed(d.data[['alcohol', 'flavanoids', 'color_intensity', 'hue', 'proline']].assign(
        cultivar=np.array(['barolo', 'grignolino', 'barbera'])[d.target]))

def cancer():
    d = datasets.load_breast_cancer(as_frame=True)
    return _timed(d.data[['mean radius', 'mean texture', 'mean smoothness']].assign(
        diagnosis=np.where(d.target == 1, 'benign', 'malignant')))
'''

TASK_TOML = '''
[project]
name = "tasks"

[models.wine]
task = "multiclass"
target = "cultivar"
time_column = "seen"
features = ["alcohol", "flavanoids", "color_intensity", "hue", "proline"]

[models.cancer]
target = "diagnosis"
time_column = "seen"
positive_class = "malignant"
features = ["mean radius", "mean texture", "mean smoothness"]
'''


@pytest.fixture(scope='module')
def task_project(tmp_path_factory):
    "A project with a multiclass wine pipeline (string classes) and a binary cancer pipeline ('malignant'/'benign'), registered, no alias yet."
    import sys
    from mlprod.config import get_config, reset_config
    from mlprod import registry
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.linear_model import LogisticRegression
    root, mp = project_folder(tmp_path_factory, 'tasks', {'tasks_src.py': TASK_SRC, 'mlprod.toml': TASK_TOML})
    reset_config(); cfg = get_config()
    import tasks_src
    wine, cancer = tasks_src.wine(), tasks_src.cancer()
    wf, cf = cfg.model('wine').features, cfg.model('cancer').features
    wtrain, ctrain = wine.iloc[:120], cancer.iloc[:400]
    wm = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.05)).fit(wtrain[list(wf)], wtrain['cultivar'])
    cm = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(ctrain[list(cf)], ctrain['diagnosis'])
    wv = registry.register(wm, 'wine', wtrain, categorical=[], cfg=cfg).version
    cv = registry.register(cm, 'cancer', ctrain, categorical=[], cfg=cfg).version
    import mlflow
    mlflow.set_tracking_uri(cfg.tracking_uri); mlflow.set_registry_uri(cfg.tracking_uri)
    py = {n: mlflow.pyfunc.load_model(f'models:/{n}/{v}') for n, v in (('wine', wv), ('cancer', cv))}
    yield type('P', (), dict(cfg=cfg, root=root, versions={'wine': wv, 'cancer': cv}, pyfunc=py, fitted={'wine': wm, 'cancer': cm},
                             rows={'wine': wine.iloc[120:][list(wf)].reset_index(drop=True), 'cancer': cancer.iloc[400:][list(cf)].reset_index(drop=True)}))
    registry.clear_cache(); reset_config(); mp.undo()


def _alias(cfg, name, version):
    from mlflow import MlflowClient
    MlflowClient(cfg.tracking_uri, cfg.tracking_uri).set_registered_model_alias(name, 'production', version)


def _wait(url, path, status, timeout=120, proc=None):
    "Poll GET url+path until it answers `status`; the seconds waited."
    t0 = time.time()
    with httpx.Client(trust_env=False) as c:
        while time.time() - t0 < timeout:
            if proc is not None and proc.poll() is not None: raise RuntimeError('server exited')
            try:
                if c.get(url + path, timeout=2).status_code == status: return time.time() - t0
            except httpx.TransportError: pass
            time.sleep(0.1)
    raise TimeoutError(f"{path} did not answer {status} within {timeout} s")


@pytest.fixture(scope='module')
def task_servers(task_project):
    "`mlprod serve wine` and `mlprod serve cancer`, started before any alias is set; (servers, readiness observations)."
    p = task_project
    db_url = p.cfg.db_url  # the project's own request log, which the monitor reads
    srv = {n: Server(p.root, name=n) for n in ('wine', 'cancer')}
    seen = {}
    try:
        for n, s in srv.items():
            _wait(s.url, '/live', 200, proc=s.proc)  # the process answers HTTP ...
            with httpx.Client(trust_env=False, base_url=s.url) as c:  # ... but nothing is loaded: not ready
                seen[n] = (c.get('/ping').status_code, c.get('/health').status_code, c.post('/invocations', json={'inputs': []}).status_code)
            _alias(p.cfg, n, p.versions[n])
        for n, s in srv.items():
            _wait(s.url, '/ping', 200, proc=s.proc)
            s.client = httpx.Client(base_url=s.url, trust_env=False, timeout=30)
        yield srv, seen, db_url
    finally:
        for s in srv.values():
            if getattr(s, 'client', None): s.client.close()
            s.stop()


def test_ping_and_health_are_ready_checks_live_is_liveness(task_servers):
    "MLflow's readiness case: /ping and /health fail (503) until the model is loaded, 200 after; /live is 200 throughout."
    srv, seen, _ = task_servers
    assert seen == {'wine': (503, 503, 503), 'cancer': (503, 503, 503)}
    for s in srv.values():
        assert [s.client.get(p).status_code for p in ('/ping', '/health', '/live')] == [200, 200, 200]
        assert s.client.get('/ping').text == '\n'


def test_multiclass_answers_equal_pyfunc_and_probabilities_follow_classes(task_project, task_servers):
    p, (srv, _, db_url) = task_project, task_servers
    s, rows = srv['wine'], p.rows['wine']
    want = p.pyfunc['wine'].predict(rows)
    recs = _records(rows)
    for kw in ({'json': {'dataframe_records': recs}}, {'json': {'dataframe_split': json.loads(rows.to_json(orient='split', index=False))}},
               {'json': {'inputs': recs}}, {'content': rows.to_csv(index=False).encode(), 'headers': {'Content-Type': 'text/csv'}}):
        r = s.client.post('/invocations', **kw)
        assert r.status_code == 200, r.text
        assert r.json() == {'predictions': [str(v) for v in want]}  # JSON strings, exactly pyfunc's labels
    assert len(set(want)) == 3  # every class is predicted somewhere in the rows
    r = s.client.post('/invocations', json={'dataframe_records': recs, 'params': {'predict_proba': True}}, headers={'X-Request-ID': 'wine-proba'})
    d = r.json()
    classes = [str(c) for c in p.fitted['wine'].classes_]
    assert d['classes'] == classes == ['barbera', 'barolo', 'grignolino'] and d['predictions'] == list(want)
    P = np.array(d['probabilities'])
    np.testing.assert_allclose(P, p.fitted['wine'].predict_proba(rows), rtol=0, atol=1e-9)
    np.testing.assert_allclose(P.sum(1), 1, atol=1e-9)
    assert [classes[i] for i in P.argmax(1)] == list(want)
    one = s.client.post('/invocations', json={'dataframe_records': recs[:1]}, headers={'X-Request-ID': 'wine-one'})
    assert one.json() == {'predictions': [want[0]]}
    v = s.client.get('/version').json()
    assert (v['task'], v['classes'], v['scorer']) == ('multiclass', classes, 'fast')  # the compiled fast path answered
    # the request log and the monitor's frame carry the predicted class
    time.sleep(1.5)
    logged = {r['request_id']: json.loads(r['predictions']) for r in _db_rows(db_url, "where request_id like 'wine-%'")}
    assert logged == {'wine-proba': list(want), 'wine-one': [want[0]]}
    from mlprod.requestlog import expand_requests
    import sqlite3
    con = sqlite3.connect(db_url.split('///', 1)[1])
    try: frame = pd.read_sql("select * from requests where request_id = 'wine-proba'", con).assign(labels=None)
    finally: con.close()
    assert expand_requests(frame, 'cultivar')['prediction'].tolist() == list(want)


def test_string_label_binary_answers_the_positive_class_probability(task_project, task_servers):
    p, (srv, _, _) = task_project, task_servers
    s, rows = srv['cancer'], p.rows['cancer']
    want = np.asarray(p.pyfunc['cancer'].predict(rows), dtype=float)
    r = s.client.post('/invocations', json={'dataframe_split': json.loads(rows.to_json(orient='split', index=False))})
    np.testing.assert_allclose(r.json()['predictions'], want, rtol=0, atol=1e-9)
    fitted = p.fitted['cancer']
    np.testing.assert_allclose(want, fitted.predict_proba(rows)[:, list(fitted.classes_).index('malignant')], atol=1e-12)  # 'malignant' is classes_[0]
    d = s.client.post('/invocations', json={'inputs': _records(rows.iloc[:20]), 'params': {'predict_proba': True}}).json()
    assert d['classes'] == ['benign', 'malignant']
    P = np.array(d['probabilities'])
    np.testing.assert_allclose(P, fitted.predict_proba(rows.iloc[:20]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(P[:, 1], d['predictions'], atol=1e-12)


@pytest.mark.parametrize('params, phrase', [
    ({'predict_prob': True}, "params: got keys ['predict_prob']; allowed: predict_proba"),
    ({'predict_proba': 'yes'}, "params.predict_proba: got 'yes'; allowed: true or false"),
    ([True], 'params: got [True]; allowed: an object'),
])
def test_bad_params_get_a_clear_400(task_project, task_servers, params, phrase):
    "A params key the service does not know, a non-boolean, or not an object: 400 naming it (MLflow would ignore it with a warning)."
    srv, _, _ = task_servers
    for name, s in srv.items():
        r = s.client.post('/invocations', json={'inputs': _records(task_project.rows[name].iloc[:1]), 'params': params})
        assert r.status_code == 400 and r.json()['error'] == 'params' and phrase in r.json()['message'], r.text
        assert s.client.get('/ping').status_code == 200
    r = srv['wine'].client.post('/invocations', json={'inputs': _records(task_project.rows['wine'].iloc[:1]), 'params': {'predict_proba': False}})
    assert set(r.json()) == {'predictions'}


CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'application/json; charset=UTF-8', 'application/json;charset=utf-8',
                 'application/json; something=something', 'application/json; charset=latin-1', 'application/json; format=pandas-split',
                 'text/csv', 'text/csv; charset=utf-8', 'text/csv; header=present', 'text/plain', 'application/vnd.api+json',
                 'application/x-www-form-urlencoded']


def test_content_types_get_mlflows_status_codes(task_project, task_servers):
    "Each content type is sent to MLflow's own `invocations` (in process, on the same pyfunc model) and to `mlprod serve`: same status."
    from mlflow.pyfunc import scoring_server as ss
    from mlflow.exceptions import MlflowException
    p, (srv, _, _) = task_project, task_servers
    s, rows, model = srv['wine'], p.rows['wine'].iloc[:3], p.pyfunc['wine']
    schema = model.metadata.get_input_schema()
    got, want = {}, {}
    for ct in CONTENT_TYPES:
        body = rows.to_csv(index=False) if ct.startswith('text/csv') else json.dumps({'dataframe_records': _records(rows)})
        try: want[ct] = ss.invocations(body.encode(), ct, model, schema).status
        except MlflowException as e: want[ct] = e.get_http_status_code()
        got[ct] = s.client.post('/invocations', content=body.encode(), headers={'Content-Type': ct}).status_code
    assert got == want, {ct: (got[ct], want[ct]) for ct in CONTENT_TYPES if got[ct] != want[ct]}
    assert [got[c] for c in ('application/json; charset=utf-8', 'application/json; something=something', 'text/csv; charset=utf-8')] == [200, 415, 200]


def test_monitor_reads_the_predicted_class_from_the_request_log(task_project, task_servers, monkeypatch):
    "Multiclass traffic in the log: the monitor's prediction drift is categorical over the logged classes, without rescoring the window."
    from mlprod import monitor as mon
    p, (srv, _, _) = task_project, task_servers
    rows = p.rows['wine']
    for i in range(0, len(rows), 10):
        r = srv['wine'].client.post('/invocations', json={'dataframe_records': _records(rows.iloc[i:i + 10])},
                                    headers={'X-Event-Time': '2024-03-01T10:00:00Z', 'X-Request-ID': f'wine-mon-{i}'})
        assert r.status_code == 200
    time.sleep(1.5)
    kw = dict(cfg=p.cfg, log_to_mlflow=False, record=False, alerts=False)
    first = mon.monitor('wine', '2024-03-01', '2024-03-02', **kw)  # builds and caches the reference profile
    from mlprod.profiles import prediction_column as score  # patched where the monitor looks it up
    def no_rescoring(model, df):  # the reference may be scored; rows from the log (they carry request_id) must not be
        if 'request_id' in df.columns: raise AssertionError('the monitor rescored rows whose predicted class is in the log')
        return score(model, df)
    monkeypatch.setattr(mon, 'prediction_column', no_rescoring)
    res = mon.monitor('wine', '2024-03-01', '2024-03-02', **kw)
    pd_ = res.prediction_drift
    assert res.figures['rows'] == len(rows) == 58 and (pd_.kind, pd_.n_current) == ('categorical', 58)
    assert pd_.statistic == first.prediction_drift.statistic
