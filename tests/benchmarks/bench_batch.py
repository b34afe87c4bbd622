"""Benchmark: batch scoring and drift of large Parquet tables.

1. Scoring, 15 flights features resampled from real 2013 rows: mlprod's local engine (contract check, fast encoding,
   rejects, atomic Parquet output) vs `mlflow.pyfunc` `predict` of the same registered version on the same data in the
   same chunks (read with the same reader, `mlprod.batch.input_batches`; pyfunc gets the categorical columns as text, the
   engine as pandas categoricals; no output written). The engine scores with the version's trees compiled by lleaves
   (`mlprod.batch.batch_predictor`: compiled into the project's cache by the first side, loaded by the second, proven
   equal to the booster either way; the line printed says which and how long). Each side runs in its own subprocess; the clock starts
   after the imports, the model load and the compiled trees (timed apart: 'load s') at the first chunk and stops after the last one, so
   rows/s is the scoring rate, not the start-up cost. The local engine runs on SMALL rows (the first part file) and on
   all ROWS (is memory flat as the input grows?); pyfunc on the SMALL prefix only, said so in the printed line. The SMALL
   runs of both sides are repeated REPEATS times in alternating rounds (MLPROD_BENCH_REPEATS, default 3), each round
   ratio printed, the median round shown in the table.
2. Drift of DRIFT_ROWS rows x 30 columns from Parquet against a cached reference profile (`mlprod.batch.parquet_drift`) vs
   Evidently 0.7's DataDriftPreset on the same table, in a subprocess limited to EVIDENTLY_GB of address space and
   EVIDENTLY_S seconds (its time, or how it failed).
3. Monitoring a batch window (`mlprod monitor NAME --source batch`, i.e. `monitor_batch`): SMALL and ROWS resampled
   flights rows scored by the local engine and recorded, every 20th row labelled, each size in its own project; the
   streamed monitor (chunks: value counts, unseen counts, labelled rows, a 100,000-row sample) beside the old in-memory
   way (`load_window(source='batch')` reads the window's rows with pandas, then `evaluate_window`), each in its own
   process, the in-memory one under MONITOR_GB of address space and MONITOR_S seconds (its figures, or how it failed).

`make bench` runs it: ROWS = 10,000,000 (MLPROD_BENCH_SCORE_ROWS), SMALL = 1,000,000 (MLPROD_BENCH_SCORE_SMALL); the
drift part reads DRIFT_ROWS = 10,000,000 rows (MLPROD_BENCH_DRIFT_ROWS). Prints figures and ratios; asserts only that
the outputs are right (equal predictions on the first 200,000 rows, equal row counts)."""
import json, os, resource, subprocess, sys, time
from pathlib import Path

import numpy as np, pandas as pd, pytest

ROWS = int(os.environ.get('MLPROD_BENCH_SCORE_ROWS', 10_000_000))
SMALL = min(int(os.environ.get('MLPROD_BENCH_SCORE_SMALL', 1_000_000)), ROWS)
DRIFT_ROWS = int(os.environ.get('MLPROD_BENCH_DRIFT_ROWS', 10_000_000))
CHUNK = 100_000
TREES = int(os.environ.get('MLPROD_BENCH_BATCH_TREES', 30))
REPEATS = int(os.environ.get('MLPROD_BENCH_REPEATS', 3))  # scoring: each side this many times on SMALL rows, alternating
EVIDENTLY_GB, EVIDENTLY_S = 8, int(os.environ.get('MLPROD_BENCH_EVIDENTLY_S', 150))
MONITOR_GB, MONITOR_S = 8, int(os.environ.get('MLPROD_BENCH_MONITOR_S', 900))
YEAR = ('2013-01-01', '2014-01-01')  # the monitored window: every resampled row
HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


def _rss_mb():
    "Peak RSS of this process in MB: VmHWM (ru_maxrss would carry the peak of the pytest process that started it across exec)."
    with open('/proc/self/status') as f: return next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024


def _cpu_s(): return sum(os.times()[:2])  # user + system CPU seconds of this process (all its threads)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), MLFLOW_DISABLE_TELEMETRY='true', DO_NOT_TRACK='true')


def write_scoring_data(folder: Path, flights: pd.DataFrame, feats: list):
    "ROWS resampled flights rows as a folder of SMALL-row Parquet files (part 0 alone is the SMALL input)."
    import pyarrow as pa, pyarrow.parquet as pq
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    src = flights[feats + ['time_hour']].reset_index(drop=True)
    for k, start in enumerate(range(0, ROWS, SMALL)):
        n = min(SMALL, ROWS - start)
        part = src.iloc[rng.integers(0, len(src), n)].reset_index(drop=True).assign(flight_id=np.arange(start, start + n))
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder/f"part-{k:03d}.parquet", row_group_size=CHUNK)


def write_drift_data(path: Path):
    "DRIFT_ROWS x 30 columns (20 numeric, 10 categorical; some shifted): bench_drift's 1M-row block written again and again; the reference is 1M unshifted rows."
    sys.path.insert(0, str(HERE.parent))
    from bench_drift import make_frames
    import pyarrow as pa, pyarrow.parquet as pq
    ref, cur = make_frames(min(1_000_000, DRIFT_ROWS), seed=0)
    ref.to_parquet(path.with_name('reference.parquet'))
    t = pa.Table.from_pandas(cur, preserve_index=False); del ref, cur
    with pq.ParquetWriter(path, t.schema) as w:
        for start in range(0, DRIFT_ROWS, t.num_rows): w.write_table(t.slice(0, min(t.num_rows, DRIFT_ROWS - start)), row_group_size=250_000)


def worker(kind: str, args: dict):
    "One measured side, in its own process; figures as JSON on the last stdout line."
    res = {'kind': kind}
    t = time.perf_counter()
    if kind == 'local':
        from mlprod.batch import score_local, batch_model, batch_predictor
        from mlprod import registry
        from mlprod.config import get_config
        cfg = get_config(args['project'])
        lm = registry.load('flights', 'production', cfg)
        served = batch_model(lm); tc = time.perf_counter()  # the compiled trees: compiled once into the project's cache, else loaded; proven
        pred, how = batch_predictor(served, cfg.state_dir/'compiled'); res.update(predictor=how, predictor_s=time.perf_counter() - tc)
        res['loaded_mb'] = _rss_mb()  # imports, model and compiled trees, before any row
        res['load_s'] = time.perf_counter() - t; t, cpu = time.perf_counter(), _cpu_s()
        r = score_local(served, args['input'], args['output'], id_column='flight_id',
                        time_column='time_hour', chunk_rows=CHUNK, cache_dir=cfg.state_dir/'compiled')
        assert r.predictor == how, (r.predictor, how)
        res.update(rows=r.n_scored)
    elif kind == 'pyfunc':
        import mlflow
        from mlprod.batch import input_batches
        from mlprod.config import get_config
        from mlprod import registry
        cfg = get_config(args['project'])
        lm = registry.load('flights', 'production', cfg)
        model = mlflow.pyfunc.load_model(lm.model_uri); res['loaded_mb'] = _rss_mb()
        res['load_s'] = time.perf_counter() - t; t, cpu = time.perf_counter(), _cpu_s()
        feats, preds, n = list(lm.features), [], 0
        _, chunks = input_batches(args['input'], feats + ['flight_id', 'time_hour'], chunk_rows=CHUNK)
        for c in chunks:
            p = np.asarray(model.predict(c[feats]), dtype='float64'); n += len(p)
            if n <= 200_000: preds.append(p)
        np.save(args['output'], np.concatenate(preds)[:200_000]); res.update(rows=n)
    elif kind == 'mlprod-drift':
        from mlprod.drift import ReferenceProfile
        from mlprod.batch import parquet_drift
        prof = ReferenceProfile.load(args['profile'])  # the cached reference
        t = time.perf_counter()
        r = parquet_drift(prof, args['input'])
        res.update(rows=r.n_current, n_drifted=r.n_drifted, dataset_drift=r.dataset_drift)
    elif kind in ('monitor-stream', 'monitor-memory'):
        from mlprod.config import get_config
        from mlprod.monitor import monitor, monitor_batch, load_window
        cfg = get_config(args['project'])
        if kind == 'monitor-memory': resource.setrlimit(resource.RLIMIT_AS, (MONITOR_GB << 30, MONITOR_GB << 30))
        t = time.perf_counter()
        if kind == 'monitor-stream': r = monitor_batch('flights', *YEAR, cfg=cfg)
        else: r = monitor('flights', *YEAR, cfg=cfg, window=load_window('flights', *YEAR, cfg=cfg, source='batch'), log_to_mlflow=False, alerts=False, record=False)
        res.update(rows=r.figures['rows'], status=r.status.value, checks={c.name: [c.status.value, c.observed if isinstance(c.observed, (int, float)) else None]
                                                                          for c in r.checks.checks})
    else:  # evidently, under an address-space limit
        resource.setrlimit(resource.RLIMIT_AS, (EVIDENTLY_GB << 30, EVIDENTLY_GB << 30))
        import warnings; warnings.simplefilter('ignore')
        from evidently import Report, Dataset, DataDefinition
        from evidently.presets import DataDriftPreset
        ref, cur = pd.read_parquet(args['reference']), pd.read_parquet(args['input'])
        dd = DataDefinition(numerical_columns=[c for c in cur if c.startswith('num')], categorical_columns=[c for c in cur if c.startswith('cat')])
        snap = Report([DataDriftPreset()]).run(Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd))
        snap.dict(); res.update(rows=len(cur))
    res.update(seconds=time.perf_counter() - t, peak_mb=_rss_mb())
    if 'load_s' in res: res['cpu_s'] = _cpu_s() - cpu
    print(json.dumps(res))


def run_side(kind: str, timeout: float = 1800, **args) -> dict:
    "Run `worker(kind)` in a subprocess: its figures, or how it failed (exit code, signal, timeout, last error line)."
    t = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, str(HERE), kind, json.dumps({k: str(v) for k, v in args.items()})], env=_env(),
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'kind': kind, 'failed': f"stopped after {timeout:.0f} s", 'wall_s': time.perf_counter() - t}
    if p.returncode != 0:
        err = [l for l in p.stderr.strip().splitlines() if l.strip()][-1:] or [f"exit {p.returncode}"]
        return {'kind': kind, 'failed': f"exit {p.returncode}: {err[0][:160]}", 'wall_s': time.perf_counter() - t}
    r = json.loads(p.stdout.strip().splitlines()[-1]); r['wall_s'] = time.perf_counter() - t
    return r


@pytest.fixture(scope='module')
def bench_project(tmp_path_factory):
    "A project with a production flights LightGBM (TREES trees) trained on Jan-Feb 2013."
    import dataclasses
    from mlprod.config import DEFAULT_TOML, parse_config, ensure_state
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod import registry
    root = tmp_path_factory.mktemp('bench-batch')
    toml = DEFAULT_TOML.replace('n_estimators = 200', f'n_estimators = {TREES}').replace('reference_sample = 100000', 'reference_sample = 20000')
    (root/'mlprod.toml').write_text(toml)
    cfg = ensure_state(parse_config(toml, root=root, env={}))
    flights = load_flights('2013-01-01', '2014-01-01')
    train = flights[flights['time_hour'] < pd.Timestamp('2013-03-01', tz='UTC')].sample(40_000, random_state=0)
    v = registry.register(train_lightgbm(train, cfg.model('flights')), 'flights', train, cfg=cfg)
    registry.promote('flights', v.version, reason='bench', force=True, cfg=cfg)
    return root, cfg, flights


def test_batch_scoring_benchmark(bench_project, tmp_path):
    root, cfg, flights = bench_project
    feats = list(cfg.model('flights').features)
    t = time.perf_counter(); write_scoring_data(tmp_path/'in', flights, feats); gen = time.perf_counter() - t
    small = tmp_path/'in'/'part-000.parquet'
    rounds = []  # alternating rounds: a busy moment of the machine hits both sides alike; the median round is reported
    for _ in range(REPEATS):
        rounds.append((run_side('local', project=root, input=small, output=tmp_path/'small.parquet'),
                       run_side('pyfunc', project=root, input=small, output=tmp_path/'pyfunc.npy')))
    assert all('failed' not in a and 'failed' not in b for a, b in rounds), rounds
    ratios = [(a['rows'] / a['seconds']) / (b['rows'] / b['seconds']) for a, b in rounds]
    ours_small, pyf = rounds[sorted(range(len(rounds)), key=ratios.__getitem__)[len(rounds) // 2]]
    ours = run_side('local', project=root, input=tmp_path/'in', output=tmp_path/'big.parquet') if ROWS > SMALL else ours_small
    print(f"\n\nbatch scoring: {ROWS:,} flights rows x {len(feats)} features (resampled real 2013 rows, Parquet, written in {gen:.0f} s), "
          f"LightGBM {TREES} trees, chunks of {CHUNK:,} rows, each side in its own process")
    print("('s': first chunk read to last chunk done, after 'load s' of imports and model load; 'loaded MB': peak RSS before the first row)")
    print(f"{'':50}{'rows':>12}{'load s':>8}{'s':>9}{'rows/s':>12}{'peak MB':>10}{'loaded MB':>11}")
    sides = ((f'mlprod local engine, {SMALL:,} rows', ours_small), (f'mlflow.pyfunc predict, first {SMALL:,} rows', pyf),
             (f'mlprod local engine, {ROWS:,} rows', ours))
    for name, r in sides:
        if 'failed' in r: print(f"{name:50}  failed: {r['failed']}"); continue
        print(f"{name:50}{r['rows']:>12,}{r['load_s']:>8.1f}{r['seconds']:>9.1f}{r['rows'] / r['seconds']:>12,.0f}{r['peak_mb']:>10.0f}{r['loaded_mb']:>11.0f}")
    assert 'failed' not in ours_small and 'failed' not in pyf and 'failed' not in ours, (ours_small, pyf, ours)
    print(f"local engine predictor: {ours_small['predictor']}; {ours_small['predictor_s']:.2f} s of its 'load s' "
          f"(on {ROWS:,} rows: {ours['predictor']})")
    rate = lambda r: r['rows'] / r['seconds']
    print(f"{REPEATS} alternating rounds on {SMALL:,} rows, rows/s local engine / pyfunc per round: " + ', '.join(f"{r:.2f}x" for r in ratios)
          + f" (the median round is shown above)")
    print(f"rows/s local engine / pyfunc predict on the same {SMALL:,} rows: {rate(ours_small) / rate(pyf):.2f}x "
          f"(local engine on all {ROWS:,} rows / pyfunc on the first {SMALL:,}: {rate(ours) / rate(pyf):.2f}x; goal >= 10x)")
    print(f"CPU seconds per million rows (less sensitive to the other work on the machine): local engine {1e6 * ours_small['cpu_s'] / ours_small['rows']:.1f}, "
          f"pyfunc {1e6 * pyf['cpu_s'] / pyf['rows']:.1f} (pyfunc / local: {pyf['cpu_s'] / pyf['rows'] / (ours_small['cpu_s'] / ours_small['rows']):.2f}x)")
    print(f"with start-up (imports, model load) counted: {(ours_small['rows'] / (ours_small['seconds'] + ours_small['load_s'])) / (pyf['rows'] / (pyf['seconds'] + pyf['load_s'])):.2f}x on {SMALL:,} rows")
    print(f"peak memory {ours['peak_mb']:.0f} MB at {ROWS:,} rows vs {ours_small['peak_mb']:.0f} MB at {SMALL:,} "
          f"(goal <= 1024 MB, flat: ratio {ours['peak_mb'] / ours_small['peak_mb']:.2f})")
    out = pd.read_parquet(tmp_path/'small.parquet', columns=['prediction'])['prediction'].to_numpy()[:200_000]
    theirs = np.load(tmp_path/'pyfunc.npy')
    print(f"largest |local - pyfunc| on the first {len(theirs):,} rows: {np.max(np.abs(out - theirs)):.1e}")
    assert np.max(np.abs(out - theirs)) <= 1e-9 and ours['rows'] == ROWS


def test_parquet_drift_benchmark(tmp_path):
    from mlprod.drift import ReferenceProfile
    t = time.perf_counter(); write_drift_data(tmp_path/'current.parquet'); gen = time.perf_counter() - t
    t = time.perf_counter(); ReferenceProfile.from_frame(pd.read_parquet(tmp_path/'reference.parquet')).save(tmp_path/'reference.profile.npz'); build = time.perf_counter() - t
    ours = run_side('mlprod-drift', profile=tmp_path/'reference.profile.npz', input=tmp_path/'current.parquet')
    theirs = run_side('evidently', timeout=EVIDENTLY_S, reference=tmp_path/'reference.parquet', input=tmp_path/'current.parquet')
    print(f"\n\ndrift from Parquet: {DRIFT_ROWS:,} rows x 30 columns (20 numeric, 10 categorical; written in {gen:.0f} s) against a "
          f"{min(1_000_000, DRIFT_ROWS):,}-row reference (profile built once and cached in {build:.1f} s)")
    print(f"{'':40}{'s':>9}{'peak MB':>10}")
    print(f"{'mlprod parquet_drift (cached profile)':40}{ours['seconds']:>9.1f}{ours['peak_mb']:>10.0f}   "
          f"{ours['n_drifted']} drifted columns, data-set drift {ours['dataset_drift']} (goal <= 60 s, <= 2048 MB)")
    if 'failed' in theirs: print(f"{'evidently DataDriftPreset':40}  failed ({EVIDENTLY_GB} GB address-space limit, {EVIDENTLY_S} s cap): {theirs['failed']} after {theirs['wall_s']:.0f} s")
    else:
        print(f"{'evidently DataDriftPreset':40}{theirs['seconds']:>9.1f}{theirs['peak_mb']:>10.0f}")
        print(f"time ratio evidently / mlprod: {theirs['seconds'] / ours['seconds']:.1f}x; memory ratio {theirs['peak_mb'] / ours['peak_mb']:.1f}x")
    assert ours['rows'] == DRIFT_ROWS


def write_monitor_data(folder: Path, flights: pd.DataFrame, feats: list, rows: int, seed: int):
    "`rows` resampled flights rows (features, time_hour, flight_id) in SMALL-row Parquet files, and a labels file for every 20th row."
    import pyarrow as pa, pyarrow.parquet as pq
    folder.mkdir(parents=True, exist_ok=True)
    rng, src, labels = np.random.default_rng(seed), flights[feats + ['time_hour', 'delayed']].reset_index(drop=True), []
    for k, start in enumerate(range(0, rows, SMALL)):
        n = min(SMALL, rows - start)
        part = src.iloc[rng.integers(0, len(src), n)].reset_index(drop=True).assign(flight_id=np.arange(start, start + n))
        labels.append(pd.DataFrame({'request_id': part['flight_id'].iloc[::20].astype(str), 'label': part['delayed'].iloc[::20]}))
        pq.write_table(pa.Table.from_pandas(part.drop(columns=['delayed']), preserve_index=False), folder/f"part-{k:03d}.parquet", row_group_size=CHUNK)
    pd.concat(labels, ignore_index=True).to_parquet(folder.with_name(folder.name + '.labels.parquet'))


def test_batch_monitor_benchmark(bench_project, tmp_path):
    "Peak RSS and time of monitoring a SMALL- and a ROWS-row scored batch: streamed vs the in-memory way."
    import shutil
    from mlprod.config import parse_config, ensure_state
    from mlprod.monitor import reference_profile
    from mlprod.requestlog import ingest_labels
    from mlprod.score import score
    from mlprod import registry
    root, cfg, flights = bench_project
    feats = list(cfg.model('flights').features)
    t = time.perf_counter(); reference_profile(registry.load('flights', 'production', cfg), cfg); prof_s = time.perf_counter() - t  # cached, then copied
    sizes, res = sorted({SMALL, ROWS}), {}
    for n in sizes:
        proj = tmp_path/f"proj-{n}"; shutil.copytree(root, proj)
        pc = ensure_state(parse_config((proj/'mlprod.toml').read_text(), root=proj, env={}))
        t = time.perf_counter(); write_monitor_data(tmp_path/f"in-{n}", flights, feats, n, seed=1); gen = time.perf_counter() - t
        t = time.perf_counter()
        r = score('flights', tmp_path/f"in-{n}", tmp_path/f"out-{n}.parquet", id_column='flight_id', time_column='time_hour', cfg=pc)
        scored = time.perf_counter() - t
        t = time.perf_counter(); ingest_labels(tmp_path/f"in-{n}.labels.parquet", cfg=pc); lab = time.perf_counter() - t
        print(f"\n{n:,} rows: written in {gen:.0f} s, scored in {scored:.0f} s ({r.n_scored:,} rows), {n // 20:,} labels ingested in {lab:.0f} s")
        res[n] = (run_side('monitor-stream', timeout=MONITOR_S, project=proj), run_side('monitor-memory', timeout=MONITOR_S, project=proj))
    print(f"\n\nmonitoring a batch window (monitor --source batch): resampled flights rows scored by the local engine, every 20th row "
          f"labelled; reference profile built once and cached ({prof_s:.0f} s); each side in its own process (in memory: "
          f"{MONITOR_GB} GB address-space limit, {MONITOR_S} s cap)")
    print(f"{'':52}{'rows':>12}{'s':>9}{'peak MB':>10}   verdict")
    for n in sizes:
        for name, r in ((f'mlprod streamed (chunks + 100,000-row sample), {n:,}', res[n][0]), (f'in memory (pandas read of the window), {n:,}', res[n][1])):
            if 'failed' in r: print(f"{name:52}  failed: {r['failed']} after {r['wall_s']:.0f} s"); continue
            print(f"{name:52}{r['rows']:>12,}{r['seconds']:>9.1f}{r['peak_mb']:>10.0f}   {r['status']}")
    st = {n: res[n][0] for n in sizes}
    assert all('failed' not in r and r['rows'] == n for n, r in st.items()), st
    lo, hi = sizes[0], sizes[-1]
    print(f"streamed peak memory {st[hi]['peak_mb']:.0f} MB at {hi:,} rows vs {st[lo]['peak_mb']:.0f} MB at {lo:,} (flat: ratio {st[hi]['peak_mb'] / st[lo]['peak_mb']:.2f}); "
          f"time {st[hi]['seconds'] / st[lo]['seconds']:.1f}x for {hi / lo:.0f}x the rows")
    for n in sizes:
        mem = res[n][1]
        if 'failed' in mem: continue
        print(f"{n:,} rows: in-memory / streamed peak memory {mem['peak_mb'] / st[n]['peak_mb']:.2f}x, time {mem['seconds'] / st[n]['seconds']:.2f}x")
        counted = [k for k in mem['checks'] if k.startswith(('data_quality:', 'drift:', 'performance:')) and k != 'drift:multivariate']
        for k in counted:  # what the stream counts over every row equals the in-memory figures
            assert st[n]['checks'][k][0] == mem['checks'][k][0] and (mem['checks'][k][1] is None or abs(st[n]['checks'][k][1] - mem['checks'][k][1]) < 1e-9), (k, st[n]['checks'][k], mem['checks'][k])


if __name__ == '__main__':
    worker(sys.argv[1], json.loads(sys.argv[2]))
