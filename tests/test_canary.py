"""Canary releases under load: real `mlprod serve` processes, real MLflow model versions (bad ones are sklearn-compatible
wrappers of a real model that raise, sleep, or were trained on shuffled labels), 8 client threads on loopback."""
import dataclasses, json, os, random, signal, subprocess, sys, threading, time
from pathlib import Path

import httpx, numpy as np, pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from conftest import free_port, offline_env, run_cli

FEATURES = ['carrier', 'origin', 'dest', 'hour', 'dep_weekday', 'sched_dep_time', 'distance',
            'temp', 'dewp', 'humid', 'wind_dir', 'wind_speed', 'precip', 'pressure', 'visib']
TESTS = str(Path(__file__).resolve().parent)
GATES = dict(min_n=100, error_margin=0.02, slow_margin=0.05, latency_budget_ms=150.0, timeout_ms=1500.0, metric_margin=0.005)


class Faulty(ClassifierMixin, BaseEstimator):
    "A fitted classifier that, after its first `warmup` one-row calls (loading probes a few dozen), fails or sleeps on one-row calls."
    def __init__(self, inner=None, fail_share:float=0.0, sleep_s:float=0.0, warmup:int=100):
        self.inner, self.fail_share, self.sleep_s, self.warmup = inner, fail_share, sleep_s, warmup

    def fit(self, X, y):
        self.classes_ = self.inner.classes_; self.n_features_in_ = len(FEATURES)
        return self

    def predict_proba(self, X):
        if len(X) == 1:
            self._calls = getattr(self, '_calls', 0) + 1
            if self._calls > self.warmup:
                if self.sleep_s: time.sleep(self.sleep_s)
                if self.fail_share and random.random() < self.fail_share: raise RuntimeError('injected canary failure')
        return self.inner.predict_proba(X)

    def predict(self, X): return self.inner.predict(X)


class Server:
    "`mlprod serve` in its own process on a free loopback port (the test module importable, for the wrapped models)."
    def __init__(self, home, args=(), env=None):
        self.port = free_port(); self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(home) / f"server-{self.port}.log", 'w')
        pp = os.pathsep.join(p for p in (TESTS, os.environ.get('PYTHONPATH')) if p)
        cmd = [str(Path(sys.executable).parent / 'mlprod'), '--project', str(home), 'serve', 'flights', '--port', str(self.port), *args]
        self.proc = subprocess.Popen(cmd, env=offline_env(PYTHONPATH=pp, **(env or {})), cwd=str(home), stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                if httpx.get(self.url + '/ping', timeout=2, trust_env=False).status_code == 200: return self
            except httpx.TransportError: pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.log.close()


@pytest.fixture(scope='module')
def store(tmp_path_factory):
    "Model `flights`: v1 production, v2 a good candidate, v3 fails 20% of rows, v4 sleeps 0.3 s a row, v5 trained on shuffled labels."
    from mlprod.config import get_config
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod import registry
    home = tmp_path_factory.mktemp('canary-store')
    cfg = get_config(str(home))
    mc = dataclasses.replace(cfg.model('flights'), params={'n_estimators': 40})
    jan, feb = load_flights('2013-01-01', '2013-01-15').iloc[:3000], load_flights('2013-02-01', '2013-02-15').iloc[:3000]
    m1, m2 = train_lightgbm(jan, mc), train_lightgbm(feb, mc)
    shuffled = jan.assign(delayed=np.random.default_rng(0).permutation(jan['delayed'].to_numpy()))
    m5 = train_lightgbm(shuffled, dataclasses.replace(mc, params={'n_estimators': 300, 'num_leaves': 63, 'min_child_samples': 2}))
    v = {'v1': registry.register(m1, 'flights', jan, cfg=cfg).version}
    registry.promote('flights', v['v1'], reason='first production', force=True, cfg=cfg)
    v['v2'] = registry.register(m2, 'flights', feb, cfg=cfg).version
    v['v3'] = registry.register(Faulty(m1, fail_share=0.2).fit(None, None), 'flights', jan, params={'fail_share': 0.2}, cfg=cfg).version
    v['v4'] = registry.register(Faulty(m1, sleep_s=0.3).fit(None, None), 'flights', jan, params={'sleep_s': 0.3}, cfg=cfg).version
    v['v5'] = registry.register(m5, 'flights', jan, cfg=cfg).version
    rows = load_flights('2013-03-01', '2013-03-04').iloc[:2000].reset_index(drop=True)
    return dict(home=home, cfg=cfg, rows=rows, **v)


@pytest.fixture(scope='module')
def server(store):
    "One serve process that follows the model's canary row (no --canary): each test starts its own canary."
    srv = Server(store['home'])
    try: yield srv.wait_ready()
    finally: srv.stop()


def _records(df): return json.loads(df[FEATURES].to_json(orient='records'))


def _load(url, rows, stop, out, n_threads=8, batch=1, prefix='r'):
    "Clients posting `batch` rows per request until `stop`; `out` gets (request id, status, version, first row index)."
    recs = _records(rows)
    def run(k):
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            i = 0
            while not stop.is_set():
                j = (k * 997 + i * batch) % (len(recs) - batch)
                try:
                    r = c.post('/invocations', json={'dataframe_records': recs[j:j + batch]}, headers={'X-Request-ID': f"{prefix}-{k}-{i}"})
                    out.append((r.headers.get('x-request-id'), r.status_code, r.headers.get('x-model-version'), j))
                except httpx.TransportError as e: out.append((None, type(e).__name__, None, j))
                i += 1
    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n_threads)]
    for t in ts: t.start()
    return ts


def _run_until_decided(store, srv, version, share, timeout=60, batch=1, labels=False, **gates):
    "Start a canary of `version`, load the server until the canary is decided; (canary, responses, seconds)."
    from mlprod import canary
    cfg = store['cfg']
    c = canary.start_canary('flights', version, share, reason=f'test canary v{version}', actor='test', cfg=cfg, **{**GATES, **gates})
    stop, out, sent = threading.Event(), [], 0
    t0 = time.time()
    threads = _load(srv.url, store['rows'], stop, out, batch=batch, prefix=f"v{version}")
    try:
        while time.time() - t0 < timeout:
            time.sleep(0.5)
            if labels and len(out) > sent:  # ground truth arrives for the requests answered so far
                done, sent = [o for o in out[sent:len(out)] if o[1] == 200], len(out)
                y = store['rows']['delayed'].astype(int).tolist()
                from mlprod.requestlog import log_labels
                log_labels([o[0] for o in done], [y[o[3]:o[3] + batch] for o in done], cfg=cfg)
            last = canary.latest_canary('flights', cfg)
            if last.id == c.id and not last.running: break
    finally:
        stop.set()
        for t in threads: t.join(30)
    return canary.latest_canary('flights', cfg), out, time.time() - t0


def _statuses(out): return {s: sum(1 for o in out if o[1] == s) for s in {o[1] for o in out}}


@pytest.mark.parametrize('key,share,extra', [('v3', 0.3, {}), ('v4', 0.3, {}), ('v5', 0.5, {'batch': 20, 'labels': True})],
                         ids=['raises-on-20pct', 'slow', 'shuffled-labels'])
def test_bad_canary_is_aborted_and_callers_never_see_it(store, server, key, share, extra):
    from mlprod import registry
    version, v1 = store[key], store['v1']
    c, out, secs = _run_until_decided(store, server, version, share, **extra)
    st = _statuses(out)
    assert c.version == version and c.decision == 'aborted', (c.summary(), st)
    assert set(st) == {200}, st  # zero 5xx, no transport errors: production answered every canary failure
    assert c.share == 0.0 and c.actor == 'mlprod-canary' and 'worse than production' in c.reason
    assert registry.resolve_version('flights', 'production', cfg=store['cfg']) == v1
    assert {o[2] for o in out} <= {v1, version}
    h = [m for m in registry.history('flights', cfg=store['cfg']) if m.alias == 'canary' and m.to_version == version]
    assert [m.action for m in h] == ['canary-start', 'canary-abort'] and h[-1].decision_id == c.evidence['id']
    from mlprod.alerts import open_alerts
    assert any(a.key == 'flights/canary' for a in open_alerts(store['cfg']))
    assert list((Path(store['cfg'].reports_dir) / 'flights' / 'canary').glob('*.html'))
    # production keeps serving after the abort, and no request goes to the canary any more
    time.sleep(1.5)
    r = [httpx.post(server.url + '/invocations', json={'dataframe_records': _records(store['rows'].iloc[[i]])}, trust_env=False)
         for i in range(40)]
    assert {x.status_code for x in r} == {200} and {x.headers['x-model-version'] for x in r} == {v1}
    n_canary = sum(1 for o in out if o[2] == version)
    print(f"\ncanary v{version} ({key}): aborted after {secs:.1f} s, {len(out)} requests ({n_canary} answered by the canary), "
          f"statuses {st}: {c.reason[:200]}")


def test_good_canary_is_promoted_and_history_says_why(store, server):
    from mlprod import registry
    cfg, v2 = store['cfg'], store['v2']
    c, out, secs = _run_until_decided(store, server, v2, 0.5, auto_promote=True)
    assert c.decision == 'promoted', c.summary()
    assert set(_statuses(out)) == {200}
    # the decision row is claimed first (one process promotes), the alias moves right after: wait for it
    deadline = time.monotonic() + 30
    while registry.resolve_version('flights', 'production', cfg=cfg) != v2 and time.monotonic() < deadline: time.sleep(0.2)
    assert registry.resolve_version('flights', 'production', cfg=cfg) == v2
    move = [m for m in registry.history('flights', 'production', cfg=cfg) if m.to_version == v2][-1]
    assert move.action == 'promote' and not move.forced and move.decision_id == c.evidence['id']
    assert 'canary passed' in move.reason and 'error_rate' in move.reason and 'not worse' in move.reason
    shown = run_cli('--project', store['home'], 'canary', 'flights')
    assert shown.returncode == 0 and 'promoted' in shown.stdout and 'error_rate' in shown.stdout and 'latency canary: p50' in shown.stdout, shown
    from mlprod.dashboard import build_dashboard
    page = build_dashboard(cfg).read_text()
    assert f'canary v{v2} vs v{store["v1"]}' in page and 'flights/canary/' in page
    print(f"\ngood canary v{v2}: promoted after {secs:.1f} s, {len(out)} requests; history: {move.summary()[:300]}")


def test_share_and_abort_by_hand_are_in_the_history(store, server):
    from mlprod import canary, registry
    cfg, v5 = store['cfg'], store['v5']
    canary.start_canary('flights', v5, 0.1, reason='by hand', actor='alice', cfg=cfg, **GATES)
    r = run_cli('--project', store['home'], 'canary', 'flights', '--share', '0.4', '--reason', 'more traffic', '--actor', 'alice')
    assert r.returncode == 0 and canary.active_canary('flights', cfg).share == 0.4, r
    r = run_cli('--project', store['home'], 'canary', 'flights', '--abort', '--reason', 'not needed', '--actor', 'bob')
    assert r.returncode == 0 and 'aborted by bob: not needed' in r.stdout, r
    h = [(m.action, m.actor, m.reason) for m in registry.history('flights', cfg=cfg) if m.alias == 'canary' and m.to_version == v5][-3:]
    assert h == [('canary-start', 'alice', 'by hand (10% of requests)'), ('canary-share', 'alice', 'share 10% -> 40%: more traffic'),
                 ('canary-abort', 'bob', 'not needed')], h
    r = run_cli('--project', store['home'], 'canary', 'flights', '--abort', '--reason', 'again')
    assert r.returncode != 0 and 'no running canary' in r.stderr, r


def test_every_production_version_has_its_card_after_rollback(store):
    "Readiness went red after a rollback ('no model card for production version N'): the move writes the card."
    from mlprod import registry
    from mlprod.readiness import readiness
    cfg, v1 = store['cfg'], store['v1']
    if registry.resolve_version('flights', 'production', cfg=cfg) == v1:  # run alone: the good canary was not promoted
        registry.promote('flights', store['v2'], reason='test: v2 first', force=True, cfg=cfg)
    card = Path(cfg.reports_dir) / 'flights' / 'card' / f"v{v1}.html"
    card.unlink(missing_ok=True)
    registry.rollback('flights', reason='test: back to v1', to=v1, cfg=cfg)
    assert card.is_file()
    item = [i for i in readiness('flights', cfg=cfg).items if i.name == 'model card'][0]
    assert item.passed, item


def test_two_serve_processes_on_postgres_route_the_same_share(store, postgres):
    "Two `mlprod serve --canary staging --canary-share 0.3` on one PostgreSQL database: one canary row, the same requests routed."
    from mlprod import registry, canary
    cfg = dataclasses.replace(store['cfg'], db_url=postgres.create_database('canary_two'))
    if registry.resolve_version('flights', 'production', cfg=cfg) != store['v1']:
        registry.promote('flights', store['v1'], reason='pg test', force=True, cfg=cfg)
    registry.deploy('flights', store['v2'], to='staging', reason='pg test', cfg=cfg)
    env = {'MLPROD_DB_URL': cfg.db_url}
    servers = [Server(store['home'], ['--canary', 'staging', '--canary-share', '0.3'], env) for _ in range(2)]
    try:
        for s in servers: s.wait_ready()
        deadline = time.time() + 20  # the routers start (or join) the canary and load it within a few seconds
        body = {'dataframe_records': _records(store['rows'].iloc[[0]])}
        while time.time() < deadline:
            r = [httpx.post(s.url + '/invocations', json=body, headers={'X-Request-ID': f"probe-{i}"}, trust_env=False) for s in servers for i in range(20)]
            if all(x.headers['x-model-version'] == store['v2'] for x in r if x.status_code == 200 and canary.routes_to_canary(x.headers['x-request-id'], 0.3)) \
               and sum(x.headers['x-model-version'] == store['v2'] for x in r) > 0: break
            time.sleep(0.5)
        shown = [httpx.get(s.url + '/version', trust_env=False).json()['canary'] for s in servers]
        assert [(c['version'], c['share'], c['routed_by'], c['loaded']) for c in shown] == [(store['v2'], 0.3, 'request id', True)] * 2, shown
        answered = []
        for s in servers:
            with httpx.Client(base_url=s.url, trust_env=False, timeout=30) as c:
                answered.append({f"id-{i}": c.post('/invocations', json=body, headers={'X-Request-ID': f"id-{i}"}).headers['x-model-version'] for i in range(300)})
    finally:
        for s in servers: s.stop()
    rows = canary.latest_canary('flights', cfg)
    assert answered[0] == answered[1]  # same request id, same version, in both processes
    share = sum(v == store['v2'] for v in answered[0].values()) / 300
    assert 0.2 < share < 0.4, share
    assert all((v == store['v2']) == canary.routes_to_canary(k, 0.3) for k, v in answered[0].items())
    from mlprod import db
    import sqlalchemy as sa
    with db.engine(cfg.db_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.canaries)).scalar() == 1  # the second process joined the first's canary
    print(f"\ntwo processes on PostgreSQL: {share:.1%} of 300 request ids routed to canary v{store['v2']} by both, identically")
