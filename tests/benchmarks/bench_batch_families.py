"""Benchmark: batch scoring of the users' model families (tests/userprojects) against `mlflow.pyfunc` predict.

Each user project (mpls_stops: OneHotEncoder + StandardScaler -> LogisticRegression, binary with string labels;
hotel_rates: OrdinalEncoder -> HistGradientBoostingRegressor with categorical features; storms: SimpleImputer ->
RandomForestClassifier, 9 classes) is registered zero-config from Python on its first window, then ROWS rows resampled
from all its real rows are written as one Parquet file (row groups of 100,000). The local engine
(`mlprod.batch.score_local`: contract check, encoding, rejects, atomic output) and `mlflow.pyfunc` `predict` of the
same version on the same chunks (read with `mlprod.batch.input_batches`, no output written) each run in their own
process; the clock starts at the first chunk, after imports, model load and the batch predictor (its proof included in
'load s'). The flights LightGBM is bench_batch.py's. Prints rows/s, CPU s per million rows and the ratios; asserts only
that the predictions are equal (first 100,000 rows, 1e-9) to the model's on those rows with missing text as NaN, the
marker of the users' training frames (pyfunc is timed on the rows as Parquet gives them, missing text as None, which a
`SimpleImputer(missing_values=nan)` does not impute; the count of rows where that changes pyfunc's answer is printed).

`make bench` runs it: ROWS = 300,000 (MLPROD_BENCH_FAMILY_ROWS)."""
import importlib.util, json, os, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np, pandas as pd, pytest

ROWS = int(os.environ.get('MLPROD_BENCH_FAMILY_ROWS', 300_000))
CHECK = 100_000
HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
PROJECTS = {'mpls_stops': ('2017-01-01', '2017-04-01'), 'hotel_rates': ('2016-07-01', '2016-10-01'), 'storms': ('2004-01-01', '2015-01-01')}


def _cpu_s(): return sum(os.times()[:2])


def worker(kind: str, args: dict):
    "One measured side in its own process; figures as JSON on the last stdout line."
    from mlprod import registry
    from mlprod.config import get_config
    cfg = get_config(args['project'])
    name, t = args['name'], time.perf_counter()
    lm = registry.load(name, 'production', cfg)
    res = {'kind': kind}
    if kind == 'local':
        from mlprod.batch import score_local, batch_model, batch_predictor
        served = batch_model(lm, cfg.model(name).unseen_categories)
        _, res['predictor'] = batch_predictor(served, cfg.state_dir / 'compiled')
        res['load_s'] = time.perf_counter() - t; t, cpu = time.perf_counter(), _cpu_s()
        r = score_local(served, args['input'], args['output'], id_column='row_id', time_column=cfg.model(name).time_column,
                        cache_dir=cfg.state_dir / 'compiled', max_reject_share=None)
        res.update(rows=r.n_scored, rejected=r.n_rejected)
    else:
        import mlflow
        from mlprod.batch import input_batches
        model = mlflow.pyfunc.load_model(lm.model_uri)
        res['load_s'] = time.perf_counter() - t; t, cpu = time.perf_counter(), _cpu_s()
        feats, preds, n = list(lm.features), [], 0
        _, chunks = input_batches(args['input'], feats + ['row_id'], chunk_rows=100_000)
        first = []
        for c in chunks:
            p = np.asarray(model.predict(c[feats])); n += len(p)
            if n <= CHECK: preds.append(p); first.append(c[feats])
        res.update(rows=n, seconds=time.perf_counter() - t, cpu_s=_cpu_s() - cpu)
        # not timed: the rows again with missing text as NaN, the marker of the users' training frames. Parquet gives
        # pyfunc None, which a SimpleImputer(missing_values=nan) does not impute (mlprod.scoring.missing_markers)
        rows = pd.concat(first).iloc[:CHECK]
        want = np.asarray(model.predict(rows.apply(lambda s: s.fillna(np.nan) if s.dtype == object else s)))
        got = np.concatenate(preds)[:CHECK]
        res['pyfunc_differs'] = int(np.sum(got != want)) if got.dtype.kind != 'f' else int(np.sum(np.abs(got - want) > 1e-9))
        np.save(args['output'], want, allow_pickle=True)
        print(json.dumps(res)); return
    res.update(seconds=time.perf_counter() - t, cpu_s=_cpu_s() - cpu)
    print(json.dumps(res))


def run_side(kind: str, **args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), MLFLOW_DISABLE_TELEMETRY='true', DO_NOT_TRACK='true')
    p = subprocess.run([sys.executable, str(HERE), kind, json.dumps({k: str(v) for k, v in args.items()})], env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0: return {'kind': kind, 'failed': (p.stderr.strip().splitlines() or [f'exit {p.returncode}'])[-1][:200]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _project(tmp_path_factory, project: str):
    "The user's project registered zero-config on its first window, and ROWS resampled rows as Parquet: (root, name, input)."
    from mlprod import registry
    from mlprod.config import get_config
    root = tmp_path_factory.mktemp(f'bench-{project}')
    shutil.copytree(ROOT / 'tests' / 'userprojects' / project, root, dirs_exist_ok=True)
    spec = importlib.util.spec_from_file_location(f'my_src_bench_{project}', root / 'my_src.py')
    src = importlib.util.module_from_spec(spec); spec.loader.exec_module(src)
    df = src.load(*PROJECTS[project])
    cfg = get_config(root)
    v = registry.register(src.train(df), src.NAME, df, target=src.TARGET, time_column=src.TIME_COLUMN, cfg=cfg)
    registry.promote(src.NAME, v.version, reason='bench', force=True, cfg=cfg)
    every = src.load()
    big = every.iloc[np.random.default_rng(0).integers(0, len(every), ROWS)].drop(columns=[src.TARGET]).reset_index(drop=True)
    big.insert(0, 'row_id', np.arange(ROWS, dtype='int64'))
    big.to_parquet(root / 'in.parquet', index=False, row_group_size=100_000)
    return root, src.NAME, root / 'in.parquet'


@pytest.mark.parametrize('project', list(PROJECTS))
def test_batch_families_benchmark(project, tmp_path_factory, tmp_path):
    root, name, path = _project(tmp_path_factory, project)
    ours = run_side('local', project=root, name=name, input=path, output=tmp_path / 'out.parquet')
    theirs = run_side('pyfunc', project=root, name=name, input=path, output=tmp_path / 'pyfunc.npy')
    assert 'failed' not in ours and 'failed' not in theirs, (ours, theirs)
    rate = lambda r: r['rows'] / r['seconds']
    print(f"\n\nbatch scoring, {project}: {ROWS:,} resampled real rows, chunks of 100,000; predictor: {ours['predictor']}")
    for label, r in (('mlprod local engine', ours), ('mlflow.pyfunc predict', theirs)):
        print(f"  {label:24}{r['rows']:>10,} rows {r['seconds']:>8.2f} s {rate(r):>12,.0f} rows/s {1e6 * r['cpu_s'] / r['rows']:>7.2f} CPU s/1M rows  (load {r['load_s']:.1f} s)")
    print(f"  {project}: local engine / pyfunc rows/s {rate(ours) / rate(theirs):.2f}x, CPU per row pyfunc / local "
          f"{(theirs['cpu_s'] / theirs['rows']) / (ours['cpu_s'] / ours['rows']):.2f}x")
    print(f"  pyfunc on the rows as Parquet gives them (missing text as None) differs from the model on its training marker in "
          f"{theirs['pyfunc_differs']:,} of the first {CHECK:,} rows; mlprod is compared with the latter")
    out = pd.read_parquet(tmp_path / 'out.parquet', columns=['prediction'])['prediction'].to_numpy()[:CHECK]
    want = np.load(tmp_path / 'pyfunc.npy', allow_pickle=True)
    assert ours['rejected'] == 0 and len(out) == len(want)
    if out.dtype.kind == 'f': np.testing.assert_allclose(out, want.astype('float64'), rtol=0, atol=1e-9)
    else: assert out.tolist() == want.tolist()


if __name__ == '__main__':
    worker(sys.argv[1], json.loads(sys.argv[2]))
