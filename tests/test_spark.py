"""The Spark engine (PySpark in local[2] mode, one session for the module) on real flights months: the output equals the
local engine's row for row (1e-9) with the same rejects; the drift of the scored rows computed by Spark aggregations gives
the monitor's verdicts; `mlprod score --engine spark` records a run the monitor reads."""
import dataclasses
import numpy as np, pandas as pd, pytest
from conftest import flight_rows, production_flights, project_folder, window



@pytest.fixture(scope='module')
def spark():
    "One local[2] Spark session for the module."
    from mlprod.spark import spark_session
    s = spark_session('local[2]')
    yield s
    s.stop()


@pytest.fixture(scope='module')
def proj(tmp_path_factory, flights):
    "A project with a production flights model trained on January 2013: (cfg, model)."
    yield from production_flights(tmp_path_factory, flights, 'spark')




def by_id(df):
    return df.assign(_k=df['flight_id'].astype('int64')).sort_values('_k').drop(columns='_k').reset_index(drop=True)


def test_spark_output_and_rejects_equal_the_local_engine(proj, flights, spark, tmp_path):
    "March 2013 in two Parquet files, with broken rows: `score` on Spark and locally give the same rows, rejects and counts."
    from mlprod.score import score, batch_runs
    cfg, model = proj
    mar = flight_rows(flights, '2013-03-01', '2013-04-01')
    mar.loc[10, 'temp'] = np.inf; mar.loc[20_000, 'time_hour'] = None; mar.loc[20_001, 'carrier'] = None
    # an export that stores a numeric column as text: both engines coerce it per value and reject only what is not a number
    mar['temp'] = mar['temp'].map(lambda v: None if v != v else repr(float(v))).astype(object); mar.loc[30, 'temp'] = 'n/a'
    (tmp_path/'in').mkdir()
    mar.iloc[:15_000].to_parquet(tmp_path/'in'/'part-0.parquet', row_group_size=5_000)
    mar.iloc[15_000:].to_parquet(tmp_path/'in'/'part-1.parquet', row_group_size=5_000)  # the larger file: Spark reads it first
    kw = dict(id_column='flight_id', time_column='time_hour', cfg=cfg)
    loc = score('flights', tmp_path/'in', tmp_path/'local.parquet', **kw)
    spk = score('flights', tmp_path/'in', tmp_path/'spark.parquet', engine='spark', spark_master='local[2]', **kw)
    assert spk.engine == 'spark' and (spk.n_rows, spk.n_scored, spk.n_rejected) == (loc.n_rows, loc.n_scored, loc.n_rejected)
    assert loc.n_rows == len(mar) and loc.n_rejected >= 2
    a, b = by_id(pd.read_parquet(loc.output)), by_id(pd.read_parquet(spk.output))
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == loc.n_scored
    assert a['flight_id'].tolist() == b['flight_id'].tolist()
    for c in ('prediction', 'proba_0', 'proba_1'):
        np.testing.assert_allclose(b[c], a[c], rtol=0, atol=1e-9)
    assert a['time_hour'].equals(b['time_hour']) and a['version'].equals(b['version'])
    assert str(b['scored_at'].dtype) == str(a['scored_at'].dtype) == 'datetime64[us, UTC]'
    pd.testing.assert_frame_equal(pd.read_parquet(spk.rejects_path), pd.read_parquet(loc.rejects_path))
    assert {10, 30, 20_000} <= set(pd.read_parquet(spk.rejects_path)['row'])
    runs = batch_runs(cfg.db_url, 'flights')
    assert sorted(runs['engine']) == ['local', 'spark'] and (runs['status'] == 'success').all()
    assert runs['time_min'].nunique() == 1 and runs['time_max'].nunique() == 1  # the Spark output folder has the same time range


def test_spark_drift_profile_gives_the_monitor_verdicts(proj, flights, spark, tmp_path):
    "July 2013 scored on Spark: the drift computed by Spark aggregations, and the monitor reading the output, agree with pandas."
    from mlprod import registry
    from mlprod.drift import detect_drift
    from mlprod.monitor import monitor, window_drift, drift_checks
    from mlprod.profiles import reference_profile, PREDICTION
    from mlprod.score import score
    from mlprod.spark import scored_profile, score_spark
    cfg, model = proj
    jul = flight_rows(flights, '2013-07-01', '2013-08-01')
    jul.to_parquet(tmp_path/'july.parquet', row_group_size=10_000)
    lm = registry.load('flights', 'production', cfg)
    ref = reference_profile(lm, cfg)
    r = score_spark(lm, tmp_path/'july.parquet', tmp_path/'july.spark.parquet', id_column='flight_id', time_column='time_hour',
                    profile=ref, spark=spark)
    assert r.n_rejected == 0 and r.n_scored == len(jul)
    # the pandas path: the same rows with the monitor's score
    rows = jul[lm.features].assign(**{PREDICTION: lm.predict_scores(jul)})
    want = detect_drift(ref, rows).to_dict()
    assert [(c['column'], c['stattest'], c['drifted']) for c in r.drift['columns']] == [(c['column'], c['stattest'], c['drifted']) for c in want['columns']]
    np.testing.assert_allclose([c['statistic'] for c in r.drift['columns']], [c['statistic'] for c in want['columns']], rtol=0, atol=1e-9)
    # the monitor's drift checks on the profile Spark computed equal those on the rows
    inputs, scored = spark.read.parquet(str(tmp_path/'july.parquet')), spark.read.parquet(str(tmp_path/'july.spark.parquet'))
    cur = scored_profile(inputs, scored, lm, ref)
    assert cur.n_rows == len(jul)
    thr = cfg.model('flights').thresholds
    assert thr.drift_mode == 'calibrated' and ref.calibration is not None  # the default mode
    def checks(thresholds):
        "The monitor's drift checks on the rows and on the profile Spark computed, in one mode."
        (d_loc, p_loc), (d_spk, p_spk) = window_drift(ref, rows, thresholds), window_drift(ref, cur, thresholds)
        assert d_spk.mode == d_loc.mode == thresholds.drift_mode and d_spk.n_current == d_loc.n_current == len(jul)
        local_checks, spark_checks = drift_checks(d_loc, thresholds, p_loc), drift_checks(d_spk, thresholds, p_spk)
        assert [(c.name, c.status) for c in spark_checks] == [(c.name, c.status) for c in local_checks]
        np.testing.assert_allclose([c.observed for c in spark_checks], [c.observed for c in local_checks], rtol=0, atol=1e-9)
        np.testing.assert_allclose([c.missing_shift or 0 for c in d_spk.columns], [c.missing_shift or 0 for c in d_loc.columns], rtol=0, atol=1e-9)
        return local_checks
    local_checks = checks(thr)
    assert {'drift:temp', 'drift:dewp'} <= {c.name for c in local_checks if c.status.value != 'success'}  # July drifts in weather
    fixed_checks = checks(dataclasses.replace(thr, drift_mode='fixed'))  # Evidently's thresholds: the same agreement
    assert {'drift:temp', 'drift:dewp'} <= {c.name for c in fixed_checks if c.status.value != 'success'}
    # `mlprod score --engine spark` records the run; the monitor reads the Spark output folder with the same verdicts
    score('flights', tmp_path/'july.parquet', tmp_path/'july.recorded.parquet', id_column='flight_id', time_column='time_hour',
          engine='spark', cfg=cfg)
    m = monitor('flights', '2013-07-01', '2013-08-01', cfg=cfg, source='batch', log_to_mlflow=False, record=False, alerts=False)
    assert m.figures['rows'] == len(jul)
    for c in local_checks: assert m[c.name].status == c.status, (c.name, m[c.name].message, c.message)


def test_killed_spark_run_leaves_no_output_and_a_rerun_succeeds(proj, flights, spark, tmp_path):
    "A driver killed (-9) after Spark wrote the output but before it was committed leaves no output; the rerun succeeds and cleans up."
    import os, subprocess, sys
    from conftest import offline_env
    from mlprod.spark import score_spark
    cfg, _ = proj
    flight_rows(flights, '2013-02-01', '2013-02-08').to_parquet(tmp_path/'feb.parquet')
    out = tmp_path/'feb.scores.parquet'
    script = f"""
import os, signal
import mlprod.spark as s
from mlprod.config import get_config
commit = s.commit_folder
def killed_before_output(spark, tmp, target):
    if target.endswith('feb.scores.parquet'): os.kill(os.getpid(), signal.SIGKILL)  # the worst moment: every part file written
    return commit(spark, tmp, target)
s.commit_folder = killed_before_output
s.score_spark('flights', {str(tmp_path/'feb.parquet')!r}, {str(out)!r}, id_column='flight_id', cfg=get_config({str(cfg.root)!r}), master='local[2]')
"""
    p = subprocess.run([sys.executable, '-c', script], cwd=cfg.root, env=offline_env(PYTHONPATH=os.environ.get('PYTHONPATH', '')),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr[-2000:]
    left = [q for q in tmp_path.iterdir() if q.name.startswith('.feb.scores.parquet.spark-')]
    assert not out.exists() and len(left) == 1 and any(left[0].glob('*.parquet'))
    r = score_spark('flights', tmp_path/'feb.parquet', out, id_column='flight_id', cfg=cfg, spark=spark)
    assert r.n_scored == len(pd.read_parquet(out)) > 0
    assert not left[0].exists()


def test_spark_scores_with_the_compiled_trees_and_refuses_a_missing_column(proj, flights, spark, tmp_path):
    "The compiled trees proven on the driver score on the executors (equal to the local engine and to the served scorer, 1e-9); a column missing from the input is one error before scoring; epoch seconds are seconds."
    from mlprod import registry
    from mlprod.batch import score_local, BatchError, rejects_path
    from mlprod.spark import score_spark
    cfg, model = proj
    lm = registry.load('flights', 'production', cfg)
    d = flight_rows(flights, '2013-05-01', '2013-05-08')
    d.to_parquet(tmp_path/'may.parquet')
    kw = dict(id_column='flight_id', time_column='time_hour', cache_dir=tmp_path/'compiled')
    spk = score_spark(lm, tmp_path/'may.parquet', tmp_path/'spark.parquet', spark=spark, **kw)
    plain = score_spark(lm, tmp_path/'may.parquet', tmp_path/'plain.parquet', spark=spark, compiled=False, **kw)
    loc = score_local(lm, tmp_path/'may.parquet', tmp_path/'local.parquet', **kw)
    assert spk.predictor.startswith('lleaves') and spk.predictor.endswith('shipped to the executors'), spk.predictor
    assert plain.predictor.startswith('served scorer') and 'compiled=False' in plain.predictor, plain.predictor
    assert list((tmp_path/'compiled').glob('lgbm-*.o')), 'the driver compiled into cache_dir'
    a, b, c = [by_id(pd.read_parquet(p)) for p in (loc.output, spk.output, plain.output)]
    assert len(a) == len(b) == len(c) == len(d) and a['flight_id'].equals(b['flight_id'])
    for col in ('prediction', 'proba_0', 'proba_1'):
        np.testing.assert_allclose(b[col], a[col], rtol=0, atol=1e-9); np.testing.assert_allclose(c[col], a[col], rtol=0, atol=1e-9)
    # a column missing from the whole input: one BatchError naming it, before scoring; nothing written
    d.drop(columns=['origin']).to_parquet(tmp_path/'no_origin.parquet')
    with pytest.raises(BatchError, match="column 'origin' is missing") as e:
        score_spark(lm, tmp_path/'no_origin.parquet', tmp_path/'no.parquet', spark=spark, id_column='flight_id')
    assert 'no_origin.parquet' in str(e.value) and str(list(lm.features)) in str(e.value)
    assert (e.value.result.n_rows, e.value.result.n_scored) == (len(d), 0)
    assert not (tmp_path/'no.parquet').exists() and not rejects_path(tmp_path/'no.parquet').exists()
    # event times as integer epoch seconds: seconds (the default unit), as the local engine reads them
    secs = (pd.to_datetime(d['time_hour'], utc=True) - pd.Timestamp('1970-01-01', tz='UTC')) // pd.Timedelta(seconds=1)
    d.assign(time_hour=secs.astype('int64')).to_parquet(tmp_path/'epoch.parquet')
    ep = score_spark(lm, tmp_path/'epoch.parquet', tmp_path/'epoch.spark.parquet', spark=spark, id_column='flight_id', time_column='time_hour')
    assert ep.time_unit == 's' and ep.n_rejected == 0
    assert by_id(pd.read_parquet(ep.output))['time_hour'].equals(a['time_hour'])
