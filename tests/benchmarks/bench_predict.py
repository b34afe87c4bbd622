"""Benchmark: single-row and 10,000-row scoring latency of the flights model through every path.

Peers measured in the same run, interleaved in rounds so that a busy machine slows them alike:
the scikit-learn pipeline (`predict_proba` on a 1-row DataFrame), the raw LightGBM booster on an
encoded float64 numpy row, `mlflow.pyfunc` on a 1-row DataFrame (the model registered in a temporary
SQLite store and loaded with `mlflow.pyfunc.load_model`), and each optimized backend of
`mlprod.optimize` three ways: on an encoded numpy row (core), on a record (dict) and on a 1-row
DataFrame. Goals: optimized single-row <= 1.0x raw LightGBM on numpy, >= 100x faster than pyfunc.
Prints times and ratios; asserts only that every path gives the same scores."""
import os, statistics, tempfile, time, warnings
from pathlib import Path

import numpy as np, pandas as pd

ROUNDS = int(os.environ.get('MLPROD_BENCH_ROUNDS', 7))
CALLS = int(os.environ.get('MLPROD_BENCH_CALLS', 200))  # single-row calls per path and round
BATCH = 10_000


def _rounds(paths: dict, args: dict, rounds: int, calls: int) -> dict:
    "Seconds per call of each path, its calls interleaved with the other paths' round by round."
    times = {k: [] for k in paths}
    for k, f in paths.items():  # warm-up
        for a in args[k][:10]: f(a)
    for _ in range(rounds):
        for k, f in paths.items():
            n = max(10, calls // 20) if k in ('pipeline DataFrame', 'mlflow.pyfunc DataFrame') else calls
            a = args[k]
            for i in range(n):
                x = a[i % len(a)]
                t = time.perf_counter(); f(x); times[k].append(time.perf_counter() - t)
    return {k: np.asarray(v) for k, v in times.items()}


def test_predict_latency():
    import mlflow
    from mlprod.config import parse_config, DEFAULT_TOML
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod import registry, optimize as opt
    warnings.filterwarnings('ignore')

    cfg = parse_config(DEFAULT_TOML, root=Path(tempfile.mkdtemp(prefix='mlprod-bench-')), env={})
    mc = cfg.model('flights')
    train = load_flights('2013-01-01', '2013-03-01')
    t = time.perf_counter(); model = train_lightgbm(train, mc); train_s = time.perf_counter() - t
    hold = load_flights('2013-03-01', '2013-04-01')
    feats = list(mc.features)
    X = hold[feats].sample(BATCH, random_state=0, replace=len(hold) < BATCH).reset_index(drop=True)

    # the registered model through mlflow.pyfunc, from a temporary SQLite store
    v = registry.register(model, 'flights', train, cfg=cfg)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/flights/{v.version}")

    enc, est = opt.encoding_of(model)
    booster = est.booster_
    backends = {}
    for name, build in opt.BACKENDS.items():
        t = time.perf_counter()
        try: backends[name] = build(est, enc)
        except opt.BackendUnavailable as e: print(f"\n{name}: skipped ({e})"); continue
        print(f"\n{name}: built in {time.perf_counter() - t:.1f} s")

    # same scores everywhere (the only assertion)
    ref = model.predict_proba(X)[:, 1]
    A = opt.encode(enc, X)
    np.testing.assert_allclose(booster.predict(A, num_threads=1), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(pyfunc.predict(X.head(500))).ravel(), ref[:500], rtol=0, atol=1e-12)
    for name, m in backends.items():
        np.testing.assert_allclose(m.predict_proba(X)[:, 1], ref, rtol=0, atol=1e-5, err_msg=name)

    rows = list(range(200))
    frames = [X.iloc[[i]] for i in rows]
    records = X.iloc[rows].to_dict('records')
    numpy_rows = [A[i:i + 1].copy() for i in rows]
    paths = {'pipeline DataFrame': lambda d: model.predict_proba(d),
             'mlflow.pyfunc DataFrame': lambda d: pyfunc.predict(d),
             'LightGBM booster numpy': lambda a: booster.predict(a, num_threads=1)}
    args = {'pipeline DataFrame': frames, 'mlflow.pyfunc DataFrame': frames, 'LightGBM booster numpy': numpy_rows}
    for name, m in backends.items():
        paths[f"{name} numpy"] = m.score_matrix; args[f"{name} numpy"] = numpy_rows
        paths[f"{name} record"] = m.predict_proba; args[f"{name} record"] = records
        paths[f"{name} DataFrame"] = m.predict_proba; args[f"{name} DataFrame"] = frames
    single = _rounds(paths, args, ROUNDS, CALLS)

    batch_paths = {'pipeline DataFrame': lambda: model.predict_proba(X),
                   'mlflow.pyfunc DataFrame': lambda: pyfunc.predict(X),
                   'LightGBM booster numpy': lambda: booster.predict(A, num_threads=1)}
    for name, m in backends.items():
        batch_paths[f"{name} numpy"] = (lambda m: lambda: m.score_matrix(A))(m)
        batch_paths[f"{name} DataFrame"] = (lambda m: lambda: m.predict_proba(X))(m)
    batch = {k: [] for k in batch_paths}
    for _ in range(3):
        for k, f in batch_paths.items():
            t = time.perf_counter(); f(); batch[k].append(time.perf_counter() - t)

    raw = np.median(single['LightGBM booster numpy'])
    pyf = np.median(single['mlflow.pyfunc DataFrame'])
    print(f"\nflights model: {est.n_estimators} trees, {len(feats)} features, trained on {len(train):,} rows in {train_s:.0f} s; "
          f"{ROUNDS} interleaved rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'path':34} {'1-row p50 µs':>13} {'p99 µs':>9} {'÷ raw numpy':>12} {'pyfunc ÷':>9} {'10k rows ms':>12}")
    for k, ts in single.items():
        p50, p99 = np.median(ts), np.percentile(ts, 99)
        b = min(batch[k]) * 1e3 if k in batch else None
        print(f"{k:34} {p50*1e6:13,.1f} {p99*1e6:9,.0f} {p50/raw:11.2f}x {pyf/p50:8.0f}x {'' if b is None else f'{b:12,.1f}'}")
    best = min((k for k in single if k.endswith(' numpy') and k != 'LightGBM booster numpy'), key=lambda k: np.median(single[k]), default=None)
    best_rec = min((k for k in single if k.endswith(' record')), key=lambda k: np.median(single[k]), default=None)
    if best:
        print(f"goal 1 (optimized single row <= 1.0x raw LightGBM numpy): {best} = {np.median(single[best])/raw:.2f}x; "
              f"end to end from a record, {best_rec} = {np.median(single[best_rec])/raw:.2f}x")
        print(f"goal 2 (>= 100x faster than mlflow.pyfunc on a DataFrame): {best} {pyf/np.median(single[best]):.0f}x; "
              f"{best_rec} {pyf/np.median(single[best_rec]):.0f}x; "
              f"from a DataFrame {best_rec.replace(' record', ' DataFrame')} {pyf/np.median(single[best_rec.replace(' record', ' DataFrame')]):.0f}x")
