"""Benchmark: the Spark engine on `local[2]` beside the local engine, on the same Parquet input in the same run.

N rows (MLPROD_BENCH_SPARK_ROWS, default 1,000,000) resampled from the 2013 flights with an id column, written as four
Parquet files; the flights model trained on January. Each engine scores the input into its own output (the local engine:
Arrow chunks in this process; Spark: `score_frame` in `mapInPandas` on two local cores, a warm-up run first so the JVM
and the Python workers are up; the session start is printed apart). Spark runs twice: with the compiled trees proven on the
driver and shipped to the executors (the default), and with the served scorer (`compiled=False`), the ratio printed. Then the drift of the scored rows against the
version's reference profile: Spark aggregations (`mlprod.spark.scored_profile`) beside `detect_drift` on the rows in pandas.
Prints rows/s and the ratios; asserts only that the outputs are equal row for row (1e-9) and the drift verdicts agree."""
import os, tempfile, time, warnings
from pathlib import Path

import numpy as np, pandas as pd

ROWS = int(os.environ.get('MLPROD_BENCH_SPARK_ROWS', 1_000_000))
FILES = 4


def test_spark_engine_beside_local():
    from mlprod.config import parse_config, DEFAULT_TOML
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod.batch import score_local
    from mlprod.drift import detect_drift
    from mlprod.profiles import build_reference_profile, PREDICTION
    from mlprod import registry
    from mlprod.spark import spark_session, score_spark, scored_profile
    warnings.filterwarnings('ignore')

    root = Path(tempfile.mkdtemp(prefix='mlprod-bench-spark-'))
    cfg = parse_config(DEFAULT_TOML, root=root, env={})
    mc = cfg.model('flights')
    train = load_flights('2013-01-01', '2013-02-01')
    v = registry.register(train_lightgbm(train, mc), 'flights', train, cfg=cfg)
    model = registry.load('flights', v.version, cfg)
    src = load_flights('2013-01-01', '2014-01-01')
    data = src.sample(ROWS, replace=True, random_state=0).reset_index(drop=True).assign(flight_id=lambda d: np.arange(len(d)))
    (root/'in').mkdir()
    for k, part in enumerate(np.array_split(np.arange(ROWS), FILES)):
        data.iloc[part].to_parquet(root/'in'/f'part-{k}.parquet', row_group_size=100_000)
    kw = dict(id_column='flight_id', time_column='time_hour')

    t = time.perf_counter(); spark = spark_session('local[2]'); start_s = time.perf_counter() - t
    score_spark(model, root/'in'/'part-0.parquet', root/'warm.parquet', spark=spark, **kw)  # JVM, Python workers, model shipped once

    loc = score_local(model, root/'in', root/'local.parquet', **kw)
    spk = score_spark(model, root/'in', root/'spark.parquet', spark=spark, **kw)
    plain = score_spark(model, root/'in', root/'spark_plain.parquet', spark=spark, compiled=False, **kw)  # the served scorer on the executors
    print(f"\n{ROWS:,} rows x {len(model.features)} features from {FILES} Parquet files (session start {start_s:.1f} s, not counted)")
    print(f"  local engine (one process)   {loc.seconds:7.1f} s  {loc.rows_per_s:10,.0f} rows/s  peak {loc.peak_mb:,.0f} MB")
    print(f"  Spark engine (local[2])      {spk.seconds:7.1f} s  {spk.rows_per_s:10,.0f} rows/s  ratio Spark/local {spk.rows_per_s / loc.rows_per_s:.2f}x")
    print(f"  Spark, served scorer         {plain.seconds:7.1f} s  {plain.rows_per_s:10,.0f} rows/s  compiled trees / served scorer on Spark {spk.rows_per_s / plain.rows_per_s:.2f}x")
    print(f"  predictors: local {loc.predictor}; Spark {spk.predictor}")

    a = pd.read_parquet(root/'local.parquet').sort_values('flight_id', key=lambda s: s.astype('int64')).reset_index(drop=True)
    b = pd.read_parquet(root/'spark.parquet').sort_values('flight_id', key=lambda s: s.astype('int64')).reset_index(drop=True)
    assert len(a) == len(b) == ROWS and a['flight_id'].equals(b['flight_id'])
    c0 = pd.read_parquet(root/'spark_plain.parquet').sort_values('flight_id', key=lambda s: s.astype('int64')).reset_index(drop=True)
    gap = max(float(np.abs(x[c] - b[c]).max()) for c in ('prediction', 'proba_0', 'proba_1') for x in (a, c0))
    assert gap <= 1e-9 and a['time_hour'].equals(b['time_hour'])
    print(f"  output check: {len(b):,} rows equal by id, largest probability gap {gap:.1e}")

    ref = build_reference_profile(model)
    t = time.perf_counter()
    cur = scored_profile(spark.read.parquet(str(root/'in')), spark.read.parquet(str(root/'spark.parquet')), model, ref)
    d_spark = detect_drift(ref, cur); spark_drift_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = data[model.features].assign(**{PREDICTION: b['proba_1'].to_numpy()})  # ids are 0..N-1: sorted output = input order
    d_pandas = detect_drift(ref, rows); pandas_drift_s = time.perf_counter() - t
    assert [(c.column, c.drifted) for c in d_spark.columns] == [(c.column, c.drifted) for c in d_pandas.columns]
    assert max(abs(x.statistic - y.statistic) for x, y in zip(d_spark.columns, d_pandas.columns)) <= 1e-9
    print(f"  drift of {len(ref)} columns: Spark aggregations {spark_drift_s:.1f} s, pandas on the rows in memory {pandas_drift_s:.1f} s; "
          f"same verdicts ({d_spark.n_drifted} drifted)")
