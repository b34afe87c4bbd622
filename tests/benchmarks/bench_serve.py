"""Benchmark: `mlprod serve` (validation and request log on, 1 worker) vs `mlflow models serve --env-manager local`
on the same registered model, for each model family mlprod compiles (`mlprod.scoring`): LightGBM,
HistGradientBoosting, RandomForest, ExtraTrees and LogisticRegression, each in a user-style scikit-learn pipeline
trained on real flights data. Loopback only.

Per family: single-row sequential p50/p99 latency and 8-client throughput of both servers, measured in alternating
rounds so that a busy moment of the machine hits both alike, and the ratios. Goal (not asserted, the machine decides
absolute times): throughput >= 10x mlflow serve for every family. Asserted: both servers give the same prediction,
mlprod serves every family through its fast scorer, and it answers every request.
MLPROD_BENCH_REQUESTS (default 300) and MLPROD_BENCH_SECONDS (default 6) shorten a run; MLPROD_BENCH_FAMILIES
(comma-separated) picks families."""
import http.client, json, os, signal, socket, subprocess, sys, textwrap, threading, time
from pathlib import Path

import httpx, numpy as np, pytest

N_SEQ = int(os.environ.get('MLPROD_BENCH_REQUESTS', 300))
SECONDS = float(os.environ.get('MLPROD_BENCH_SECONDS', 6))
ROUNDS = 3
FEATURES = ['carrier', 'origin', 'dest', 'hour', 'dep_weekday', 'sched_dep_time', 'distance',
            'temp', 'dewp', 'humid', 'wind_dir', 'wind_speed', 'precip', 'pressure', 'visib']
CATEGORICAL = ['carrier', 'origin', 'dest']


def _pipeline(family):
    "A pipeline as a user would write it: encoders and scalers in a ColumnTransformer, then the estimator."
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder, OneHotEncoder, StandardScaler
    from sklearn.impute import SimpleImputer
    from sklearn.ensemble import (HistGradientBoostingClassifier, RandomForestClassifier, ExtraTreesClassifier)
    from sklearn.linear_model import LogisticRegression
    import lightgbm as lgb
    nums = [c for c in FEATURES if c not in CATEGORICAL]
    ordinal = OrdinalEncoder(handle_unknown='use_encoded_value', unknown_value=-1, encoded_missing_value=-2)
    trees = lambda est: make_pipeline(ColumnTransformer([('cat', ordinal, CATEGORICAL), ('num', 'passthrough', nums)]), est)
    if family == 'LightGBM': return trees(lgb.LGBMClassifier(n_estimators=200, num_leaves=31, verbose=-1, random_state=0))
    if family == 'HistGradientBoosting': return trees(HistGradientBoostingClassifier(max_iter=100, random_state=0))
    if family == 'RandomForest': return trees(RandomForestClassifier(n_estimators=100, min_samples_leaf=5, random_state=0))
    if family == 'ExtraTrees': return trees(ExtraTreesClassifier(n_estimators=100, min_samples_leaf=5, random_state=0))
    if family == 'LogisticRegression':
        return make_pipeline(ColumnTransformer([
            ('cat', make_pipeline(SimpleImputer(strategy='most_frequent'), OneHotEncoder(handle_unknown='ignore')), CATEGORICAL),
            ('num', make_pipeline(SimpleImputer(strategy='median'), StandardScaler()), nums)]), LogisticRegression(max_iter=1000))
    raise ValueError(family)


FAMILIES = [f for f in os.environ.get('MLPROD_BENCH_FAMILIES', 'LightGBM,HistGradientBoosting,RandomForest,ExtraTrees,LogisticRegression').split(',') if f]


def _port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG')}
    for k in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY'): env.pop(k, None)
    env.update(MLFLOW_DISABLE_TELEMETRY='true', DO_NOT_TRACK='true', NO_PROXY='127.0.0.1,localhost', **extra)
    env['PATH'] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow serve execs `uvicorn`
    return env


class Proc:
    "A server process in its own process group, on a free loopback port."
    def __init__(self, cmd, port, cwd, env, ready_path='/ping'):
        self.url, self.log = f"http://127.0.0.1:{port}", open(Path(cwd) / f"server-{port}.log", 'w')
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ready_path = ready_path
    def wait(self, timeout=180):
        t0 = time.time()
        with httpx.Client(trust_env=False) as c:
            while time.time() - t0 < timeout:
                if self.proc.poll() is not None: raise RuntimeError(Path(self.log.name).read_text()[-3000:])
                try:
                    if c.get(self.url + self.ready_path, timeout=2).status_code == 200: return self
                except httpx.TransportError: pass
                time.sleep(0.3)
        raise TimeoutError(Path(self.log.name).read_text()[-3000:])
    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: pass
        try: os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        self.proc.wait(); self.log.close()


def _connect(url):
    "A keep-alive HTTP/1.1 connection (http.client: a light client, so the servers, not the client, are measured)."
    host, port = url.rsplit('/', 1)[-1].split(':')
    return http.client.HTTPConnection(host, int(port), timeout=30)


def _post(conn, body):
    conn.request('POST', '/invocations', body=body, headers={'Content-Type': 'application/json'})
    r = conn.getresponse(); r.read()
    return r.status


def sequential(url, body, n=N_SEQ, warmup=30):
    "Latencies (ms) of `n` single-row requests, one after another on a keep-alive connection."
    out, conn = [], _connect(url)
    try:
        for i in range(warmup + n):
            t = time.perf_counter()
            status = _post(conn, body)
            dt = (time.perf_counter() - t) * 1000
            assert status == 200
            if i >= warmup: out.append(dt)
    finally: conn.close()
    return np.array(out)


def throughput(url, body, seconds=SECONDS, clients=8):
    "Responses per second with `clients` threads sending single rows for `seconds`."
    counts, errors, deadline = [0] * clients, [0] * clients, time.monotonic() + seconds
    def run(k):
        conn = _connect(url)
        try:
            while time.monotonic() < deadline:
                if _post(conn, body) == 200: counts[k] += 1
                else: errors[k] += 1
        finally: conn.close()
    ts = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in ts: t.start()
    for t in ts: t.join()
    return sum(counts) / (time.monotonic() - t0), sum(errors)


def _bench_family(family, root, train, row):
    "Register the family's pipeline in its own project, serve it both ways, measure; the figures of both servers."
    import sqlalchemy as sa
    from mlprod.config import get_config
    from mlprod import registry, db
    cfg = get_config(str(root))
    t = time.perf_counter()
    model = _pipeline(family).fit(train[FEATURES], train['delayed'])
    fit_s = time.perf_counter() - t
    v = registry.register(model, 'flights', train, cfg=cfg).version
    registry.promote('flights', v, to='production', reason='benchmark', force=True, cfg=cfg)
    body = json.dumps({'dataframe_split': json.loads(row.to_json(orient='split', index=False))}).encode()
    want = float(model.predict_proba(row)[0, 1])
    procs = {}
    try:
        p = _port()
        procs['mlprod serve'] = Proc([sys.executable, '-c', f"from mlprod.serve import serve; serve('flights', port={p}, project={str(root)!r})"],
                                     p, root, _env(), '/health')
        p = _port()
        procs['mlflow models serve'] = Proc([str(Path(sys.executable).parent / 'mlflow'), 'models', 'serve', '-m', f'models:/flights/{v}',
                                             '--env-manager', 'local', '--port', str(p), '--host', '127.0.0.1'],
                                            p, root, _env(MLFLOW_TRACKING_URI=cfg.tracking_uri))
        for name, srv in procs.items():
            srv.wait()
            with httpx.Client(trust_env=False) as c:
                got = c.post(srv.url + '/invocations', content=body, headers={'Content-Type': 'application/json'}).json()['predictions'][0]
            assert abs(got - want) < 1e-9, (family, name, got, want)
        with httpx.Client(trust_env=False) as c: version = c.get(procs['mlprod serve'].url + '/version').json()
        lat, rps, errs = {n: [] for n in procs}, {n: [] for n in procs}, {n: 0 for n in procs}
        for rnd in range(ROUNDS):
            for name, srv in procs.items():
                lat[name].append(sequential(srv.url, body, n=N_SEQ // ROUNDS, warmup=30 if rnd == 0 else 5))
                r, e = throughput(srv.url, body, seconds=SECONDS / ROUNDS)
                rps[name].append(r); errs[name] += e
    finally:
        for srv in procs.values(): srv.stop()
    with db.engine(cfg.db_url).connect() as c: logged = c.execute(sa.select(sa.func.count()).select_from(db.requests_log)).scalar()
    res = {n: dict(p50=float(np.percentile(np.concatenate(lat[n]), 50)), p99=float(np.percentile(np.concatenate(lat[n]), 99)),
                   rps=float(np.mean(rps[n])), errors=errs[n]) for n in procs}
    return res, version, logged, fit_s


def test_bench_serve_every_family(tmp_path):
    from mlprod.data import load_flights
    df = load_flights('2013-01-01', '2013-03-01').sample(10_000, random_state=0).sort_values('time_hour')
    row = load_flights('2013-03-01', '2013-03-02')[FEATURES].iloc[[7]]
    out, failures = {}, []
    for family in FAMILIES:
        root = tmp_path / family; root.mkdir()
        res, version, logged, fit_s = _bench_family(family, root, df, row)
        out[family] = res
        m, f = res['mlprod serve'], res['mlflow models serve']
        print('\n' + textwrap.dedent(f"""\
            {family} (fit {fit_s:.1f} s; mlprod scorer: {version['scorer']}{' — ' + str(version.get('scorer_reason')) if version.get('scorer_reason') else ''}):
            {'server':<22}{'p50 ms':>9}{'p99 ms':>9}{'req/s (8 clients)':>20}{'errors':>8}"""))
        for name, r in res.items(): print(f"{name:<22}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['rps']:>20.0f}{r['errors']:>8}")
        print(f"throughput mlprod / mlflow serve: {m['rps'] / f['rps']:.1f}x (goal >= 10x); p50 mlflow / mlprod: {f['p50'] / m['p50']:.1f}x; "
              f"request log rows: {logged}")
        if version['scorer'] != 'fast': failures.append(f"{family}: generic scorer ({version.get('scorer_reason')})")
        if m['errors'] or logged < N_SEQ // ROUNDS * ROUNDS: failures.append(f"{family}: {m['errors']} errors, {logged} rows logged")
    print(f"\nserve benchmark summary ({N_SEQ} sequential, 8 clients x {SECONDS:.0f} s per server, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}):")
    print(f"{'family':<22}{'mlprod req/s':>14}{'mlflow req/s':>14}{'ratio':>8}{'mlprod p50':>12}{'mlflow p50':>12}")
    for family, res in out.items():
        m, f = res['mlprod serve'], res['mlflow models serve']
        print(f"{family:<22}{m['rps']:>14.0f}{f['rps']:>14.0f}{m['rps'] / f['rps']:>7.1f}x{m['p50']:>10.2f}ms{f['p50']:>10.2f}ms")
    assert not failures, failures
