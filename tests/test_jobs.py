"""End-to-end runs of job notebooks through the `mlprod run` command: reports, records, failures, timeouts, injection."""
import json, re, sqlite3, subprocess, sys, time, uuid
from pathlib import Path
import pytest
from conftest import BIN, offline_env

# the real `mlprod.cli.main`, which imports only the module of the command it runs
CLI = "import sys, mlprod.cli as c\nsys.exit(c.main(sys.argv[1:]))"


def mlprod(*args, cwd, timeout=300):
    "Run the mlprod command as a subprocess, offline."
    return subprocess.run([str(BIN/'python'), '-c', CLI, *map(str, args)], cwd=cwd, env=offline_env(),
                          capture_output=True, text=True, timeout=timeout)


def db_rows(project, sql):
    con = sqlite3.connect(project/'.mlprod'/'mlprod.db')
    try: return con.execute(sql).fetchall()
    finally: con.close()


EXTERNAL = re.compile(r'''<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//''', re.I)


def test_parameters_are_data_never_code(tmp_path):
    marker = Path('/tmp')/f"pwned-{uuid.uuid4().hex}"
    evil = f"__import__('os').system('touch {marker}')"
    t0 = time.perf_counter()
    r = mlprod('run', 'smoke', '-p', 'message', evil, '--json', '--no-dashboard', cwd=tmp_path)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert run['status'] == 'success' and run['figures']['message'] == evil
    assert not marker.exists()
    page = Path(run['report_path']).read_text()
    assert not EXTERNAL.search(page) and 'http://' not in page and 'https://' not in page
    assert 'Smoke test' in page and 'The job runner works' in page and 'import' not in page.split('<main>')[1].split('parameters')[0]
    assert Path(run['report_path']).parent == tmp_path/'reports'/'_project'/'smoke'
    assert Path(run['notebook_path']).is_file() and str(tmp_path/'.mlprod'/'runs') in run['notebook_path']
    rows = db_rows(tmp_path, "select job, status, params, figures from job_runs")
    assert rows[0][:2] == ('smoke', 'success') and json.loads(rows[0][2]) == {'message': evil}
    print(f"\nsmoke job: {run['duration_s']:.1f} s inside run_job, {took:.1f} s for the whole command")


def test_unknown_parameter_is_rejected_with_the_known_ones(tmp_path):
    r = mlprod('run', 'smoke', '-p', 'mesage', 'x', cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown 'mesage'" in r.stderr and 'message, sleep, fail' in r.stderr
    r = mlprod('run', 'smoke', '-p', 'sleep', 'soon', cwd=tmp_path)
    assert r.returncode == 2 and 'a value of type float' in r.stderr
    r = mlprod('run', 'nosuchjob', cwd=tmp_path)
    assert r.returncode == 2 and 'monitor' in r.stderr and 'smoke' in r.stderr


def test_failing_job_writes_a_red_report_alerts_and_exits_nonzero(tmp_path):
    r = mlprod('run', 'smoke', '-p', 'fail', 'true', '-p', 'message', '<script>alert(1)</script>', cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'failed' in r.stdout and 'RuntimeError' in r.stdout
    report = Path(re.search(r'report: (\S+)', r.stdout).group(1))
    page = report.read_text()
    assert page.index('This job failed') < page.index('The job runner works')
    assert 'code cell 3' in page and 'RuntimeError: failed on purpose' in page
    assert '<script>alert(1)' not in page and '&lt;script&gt;alert(1)&lt;/script&gt;' in page
    assert not EXTERNAL.search(page)
    assert db_rows(tmp_path, "select status from job_runs") == [('failed',)]
    assert db_rows(tmp_path, "select key, severity, state, count from alerts") == [('job:smoke', 'critical', 'open', 1)]
    line = json.loads((tmp_path/'.mlprod'/'alerts.jsonl').read_text().splitlines()[-1])
    assert line['key'] == 'job:smoke' and line['severity'] == 'critical' and str(report) in line['message']
    # the dashboard was rebuilt and shows the failure
    index = (tmp_path/'reports'/'index.html')
    if index.exists(): assert 'failed' in index.read_text()


def test_hanging_job_is_stopped_at_the_timeout(tmp_path):
    t0 = time.perf_counter()
    r = mlprod('run', 'smoke', '-p', 'sleep', '120', '--timeout', '12', '--no-dashboard', '--json', cwd=tmp_path)
    took = time.perf_counter() - t0
    assert r.returncode == 1
    run = json.loads(r.stdout)
    assert run['status'] == 'failed' and 'timeout' in run['error']['error']
    assert took < 60
    page = Path(run['report_path']).read_text()
    assert 'wall-clock timeout of 12 s' in page
    # per-cell timeout
    r = mlprod('run', 'smoke', '-p', 'sleep', '120', '--cell-timeout', '3', '--no-dashboard', '--json', cwd=tmp_path)
    run = json.loads(r.stdout)
    assert r.returncode == 1 and 'per-cell timeout' in run['error']['what'] and run['error']['where'] == 'code cell 3'
    assert db_rows(tmp_path, "select count from alerts where state='open'") == [(2,)]
    # no kernel is left behind
    time.sleep(2)
    ps = subprocess.run(['ps', '-eo', 'args'], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps


def test_monitor_job_on_100k_rows(tmp_path):
    t0 = time.perf_counter()
    r = mlprod('run', 'monitor', '-p', 'model', 'flights', '-p', 'start', '2013-03-01', '-p', 'end', '2013-07-01', '--json', cwd=tmp_path)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    assert run['figures']['rows'] > 100_000 and 0 <= run['figures']['drift_share'] <= 1
    assert run['figures']['status'] in ('SUCCESS', 'WARNING', 'FAIL')
    page = Path(run['report_path']).read_text()
    assert 'Monitoring report' in page and 'What to do' in page
    assert '<svg' in page and 'role="img"' in page and 'data:image/png' not in page  # charts are inline SVG with alt text
    assert not EXTERNAL.search(page)
    assert Path(run['report_path']).parent == tmp_path/'reports'/'flights'/'monitor'
    r = mlprod('jobs', cwd=tmp_path)
    assert r.returncode == 0 and 'monitor' in r.stdout and 'success' in r.stdout
    print(f"\nmonitor job on {run['figures']['rows']} rows: {run['duration_s']:.1f} s in run_job, {took:.1f} s for the command")


def test_schedule_stops_cleanly_on_sigterm(tmp_path):
    import signal
    from mlprod.config import DEFAULT_TOML
    (tmp_path/'mlprod.toml').write_text(DEFAULT_TOML.replace('retrain = "0 3 1 * *"', 'smoke = "* * * * *"'))
    r = mlprod('schedule', '--list', cwd=tmp_path)
    assert r.returncode == 0 and 'flights:smoke' in r.stdout and '* * * * *' in r.stdout
    proc = subprocess.Popen([str(BIN/'python'), '-c', CLI, 'schedule'], cwd=tmp_path, env=offline_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if 'scheduler running' in line: break
        assert 'scheduler running 2 job(s)' in ''.join(lines)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert 'scheduler stopped' in out and time.perf_counter() - t0 < 30
    finally:
        if proc.poll() is None: proc.kill()


def test_retrain_compare_and_monitor_jobs_with_the_registry(tmp_path):
    "The release loop as jobs: retrain stages a candidate, compare decides, monitor watches production."
    import dataclasses
    from mlprod.config import DEFAULT_TOML, parse_config
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod import registry
    toml = DEFAULT_TOML.replace('reference_sample = 100000', 'reference_sample = 2000').replace('n_estimators = 200', 'n_estimators = 40')
    (tmp_path/'mlprod.toml').write_text(toml)
    cfg = parse_config(toml, root=tmp_path, env={})
    df = load_flights('2013-01-01', '2013-01-15')
    weak = train_lightgbm(df.sample(1500, random_state=0), dataclasses.replace(cfg.model('flights'), params={'n_estimators': 5, 'num_leaves': 3}))
    v1 = registry.register(weak, 'flights', df, cfg=cfg)
    registry.promote('flights', v1.version, reason='first release', cfg=cfg)

    r = mlprod('run', 'retrain', '-p', 'as_of', '2013-02-01', '--json', '--no-dashboard', cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    retrain = json.loads(r.stdout)
    assert retrain['figures']['retrain_status'] == 'staged' and retrain['figures']['version'] == '2'
    assert registry.resolve_version('flights', 'staging', cfg=cfg) == '2'

    r = mlprod('run', 'compare', '-p', 'start', '2013-02-01', '-p', 'end', '2013-02-08', '-p', 'n_boot', '100', '--json', '--no-dashboard', cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    f = run['figures']
    assert (f['champion_version'], f['challenger_version']) == ('1', '2')
    assert f['challenger_metric'] > f['champion_metric'] and f['decision'] in ('promote', 'needs_review')
    page = Path(run['report_path']).read_text()
    assert 'Champion vs challenger' in page and 'v2 (staging)' in page and not EXTERNAL.search(page)
    if f['decision'] == 'promote':  # the recorded decision lets the challenger through the registry's gate
        registry.promote('flights', '2', reason='won the comparison', decision=f['decision_id'], cfg=cfg)
        assert registry.resolve_version('flights', 'production', cfg=cfg) == '2'

    r = mlprod('run', 'monitor', '-p', 'start', '2013-02-08', '-p', 'end', '2013-02-15', '--json', cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    mon = json.loads(r.stdout)
    assert mon['figures']['version'] == registry.resolve_version('flights', 'production', cfg=cfg)
    assert 0.5 < mon['figures']['realized_metric'] < 1 and 'prediction_drift' in mon['figures']
    index = (tmp_path/'reports'/'index.html').read_text()
    prod, stag = registry.resolve_version('flights', 'production', cfg=cfg), registry.resolve_version('flights', 'staging', cfg=cfg)
    assert f'>v{prod}<' in index and f'>v{stag}<' in index and 'monitor · realized metric' in index
    print(f"\nretrain {retrain['duration_s']:.0f} s, compare {run['duration_s']:.0f} s, monitor with the production model {mon['duration_s']:.0f} s")


def test_monitor_job_on_batch_outputs(tmp_path):
    "The scheduled monitor job reads `mlprod score` outputs (source='batch'); a week scored twice counts once (the newest run wins)."
    import dataclasses
    from mlprod.config import DEFAULT_TOML, parse_config
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod.score import score
    from mlprod import registry
    toml = DEFAULT_TOML.replace('reference_sample = 100000', 'reference_sample = 2000')
    (tmp_path/'mlprod.toml').write_text(toml)
    cfg = parse_config(toml, root=tmp_path, env={})
    df = load_flights('2013-01-01', '2013-01-15').sample(3000, random_state=0)
    m = train_lightgbm(df, dataclasses.replace(cfg.model('flights'), params={'n_estimators': 10, 'num_leaves': 7}))
    registry.promote('flights', registry.register(m, 'flights', df, cfg=cfg).version, reason='batch job test', force=True, cfg=cfg)
    week = load_flights('2013-02-01', '2013-02-08').reset_index(drop=True)
    week.assign(flight_id=range(len(week))).to_parquet(tmp_path/'week.parquet')
    n = [score('flights', tmp_path/'week.parquet', tmp_path/'out'/out, id_column='flight_id', time_column='time_hour', cfg=cfg).n_scored
         for out in ('week.parquet', 'week-rerun.parquet')]
    assert n[0] == n[1] > 1000, n
    r = mlprod('run', 'monitor', '-p', 'source', 'batch', '-p', 'start', '2013-02-01', '-p', 'end', '2013-02-08', '--json', '--no-dashboard', cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    f = run['figures']
    assert (f['source'], f['rows'], f['superseded_rows'], f['version']) == ('batch', n[1], n[0], '1'), f
    assert 0 <= f['drift_share'] <= 1 and f['status'] in ('SUCCESS', 'WARNING', 'FAIL')
    page = Path(run['report_path']).read_text()
    assert 'Monitoring report' in page and '(batch)' in page and 'Traceback' not in page and not EXTERNAL.search(page)
    assert db_rows(tmp_path, "select source, n_rows from monitor_runs") == [('batch', n[1])]
