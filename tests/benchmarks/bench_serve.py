"""Benchmark: `mlprod serve` (validation and request log on, 1 worker) vs `mlflow models serve --env-manager local`
vs a bare FastAPI app calling the LightGBM booster, on the same registered model, loopback only.

Prints single-row sequential p50/p99 latency and 8-client throughput, and the ratios. Goals (not asserted, the
machine decides absolute times): throughput >= 10x mlflow serve, p50 within 1.5x of the bare app.
MLPROD_BENCH_REQUESTS (default 500) and MLPROD_BENCH_SECONDS (default 10) shorten a run. The three servers run at
once and are measured in 5 alternating rounds, so a busy moment of the machine does not favour one of them."""
import dataclasses, http.client, json, os, signal, socket, subprocess, sys, textwrap, threading, time
from pathlib import Path

import httpx, numpy as np, pytest

N_SEQ = int(os.environ.get('MLPROD_BENCH_REQUESTS', 500))
SECONDS = float(os.environ.get('MLPROD_BENCH_SECONDS', 10))
ROUNDS = 5
FEATURES = ['carrier', 'origin', 'dest', 'hour', 'dep_weekday', 'sched_dep_time', 'distance',
            'temp', 'dewp', 'humid', 'wind_dir', 'wind_speed', 'precip', 'pressure', 'visib']

BARE_APP = '''
import json, sys, numpy as np, uvicorn
from fastapi import FastAPI, Request
from mlprod.config import get_config
from mlprod import registry
model = registry.load(sys.argv[1], sys.argv[2], cfg=get_config(sys.argv[3])).model
prep, booster = model.steps[0][1], model.steps[1][1].booster_
enc = prep.named_transformers_['cat']
cats = list(prep.transformers_[0][2]); nums = list(prep.transformers_[1][2])
maps = [{c: float(i) for i, c in enumerate(cs)} for cs in enc.categories_]
app = FastAPI()
@app.post('/invocations')
async def invocations(request: Request):
    d = (await request.json())['dataframe_split']
    idx = {c: i for i, c in enumerate(d['columns'])}
    X = np.array([[m.get(r[idx[c]], -1.0) for c, m in zip(cats, maps)] + [r[idx[c]] for c in nums] for r in d['data']], dtype=np.float64)
    return {'predictions': booster.predict(X, num_threads=1).tolist()}
@app.get('/ping')
async def ping(): return {}
uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[4]), access_log=False, log_level='warning')
'''


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


def sequential(url, body, n=N_SEQ, warmup=50):
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


def test_bench_serve(tmp_path):
    from mlprod.config import get_config
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod import registry
    cfg = get_config(str(tmp_path))
    df = load_flights('2013-01-01', '2013-03-01')
    df = df.sample(20_000, random_state=0).sort_values('time_hour')
    model = train_lightgbm(df, cfg.model('flights'))  # the configured recipe: 200 trees, 31 leaves
    v = registry.register(model, 'flights', df, cfg=cfg).version
    registry.promote('flights', v, to='production', reason='benchmark', force=True, cfg=cfg)
    row = load_flights('2013-03-01', '2013-03-02')[FEATURES].iloc[[7]]
    body = json.dumps({'dataframe_split': json.loads(row.to_json(orient='split', index=False))}).encode()
    want = registry.load('flights', v, cfg=cfg).predict_scores(row)[0]

    (tmp_path / 'bare.py').write_text(BARE_APP)
    servers = {
        'mlprod serve': lambda p: Proc([sys.executable, '-c', f"from mlprod.serve import serve; serve('flights', port={p}, project={str(tmp_path)!r})"],
                                       p, tmp_path, _env(), '/health'),
        'mlflow models serve': lambda p: Proc([str(Path(sys.executable).parent / 'mlflow'), 'models', 'serve', '-m', f'models:/flights/{v}',
                                               '--env-manager', 'local', '--port', str(p), '--host', '127.0.0.1'],
                                              p, tmp_path, _env(MLFLOW_TRACKING_URI=cfg.tracking_uri)),
        'bare FastAPI + booster': lambda p: Proc([sys.executable, str(tmp_path / 'bare.py'), 'flights', v, str(tmp_path), str(p)], p, tmp_path, _env()),
    }
    # all three run at once; measurements alternate in rounds so that a busy moment of the machine hits each alike
    procs = {}
    try:
        for name, make in servers.items(): procs[name] = make(_port())
        for name, srv in procs.items():
            srv.wait()
            with httpx.Client(trust_env=False) as c:
                got = c.post(srv.url + '/invocations', content=body, headers={'Content-Type': 'application/json'}).json()['predictions'][0]
            assert abs(got - want) < 1e-9, (name, got, want)
        lat, rps, errs = {n: [] for n in procs}, {n: [] for n in procs}, {n: 0 for n in procs}
        for rnd in range(ROUNDS):
            for name, srv in procs.items():
                lat[name].append(sequential(srv.url, body, n=N_SEQ // ROUNDS, warmup=50 if rnd == 0 else 5))
                r, e = throughput(srv.url, body, seconds=SECONDS / ROUNDS)
                rps[name].append(r); errs[name] += e
    finally:
        for srv in procs.values(): srv.stop()
    res = {n: dict(p50=float(np.percentile(np.concatenate(lat[n]), 50)), p99=float(np.percentile(np.concatenate(lat[n]), 99)),
                   rps=float(np.mean(rps[n])), errors=errs[n]) for n in procs}
    import sqlalchemy as sa
    from mlprod import db
    with db.engine(cfg.db_url).connect() as c: logged = c.execute(sa.select(sa.func.count()).select_from(db.requests_log)).scalar()
    m, f, b = res['mlprod serve'], res['mlflow models serve'], res['bare FastAPI + booster']
    print('\n' + textwrap.dedent(f"""\
        serve benchmark (1 row per request, {N_SEQ} sequential, 8 clients x {SECONDS:.0f} s, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}):
        {'server':<24}{'p50 ms':>9}{'p99 ms':>9}{'req/s (8 clients)':>20}{'errors':>8}"""))
    for name, r in res.items(): print(f"{name:<24}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['rps']:>20.0f}{r['errors']:>8}")
    print(f"throughput mlprod / mlflow serve: {m['rps'] / f['rps']:.1f}x (goal >= 10x)")
    print(f"p50 mlprod / bare app: {m['p50'] / b['p50']:.2f}x (goal <= 1.5x); throughput mlprod / bare app: {m['rps'] / b['rps']:.2f}x")
    print(f"mlprod request log rows written: {logged}")
    assert m['errors'] == 0 and logged >= N_SEQ
