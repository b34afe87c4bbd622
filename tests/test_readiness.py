"""The readiness scorecard on a real project: all green when everything is in place; a missing schedule or runbook turns its item red."""
import json, shutil, subprocess
from pathlib import Path
import pytest
from conftest import free_port
from test_runbooks import built_sandbox, RUNBOOKS
from mlprod import readiness as rd, registry, alerts
from mlprod.config import parse_config

PROBE = {'carrier': 'UA', 'origin': 'EWR', 'dest': 'IAH', 'hour': 5, 'dep_weekday': 1, 'sched_dep_time': 515, 'distance': 1400,
         'temp': 39.0, 'dewp': 28.0, 'humid': 64.4, 'wind_dir': 260, 'wind_speed': 12.66, 'precip': 0, 'pressure': 1012.0, 'visib': 10}


def _cli(env, cwd, *args, timeout=300):
    return subprocess.run(['mlprod', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _rollback_drill(cfg):
    "Practise a rollback: production goes back one version, then forward again (both moves recorded)."
    cur = registry.resolve_version('flights', 'production', cfg=cfg)
    moves = [m for m in registry.history('flights', 'production', cfg=cfg)]
    if registry.previous_production(moves, cur) is None:  # e.g. after the rollback runbook ran: go forward first
        other = max((m.to_version for m in moves if m.to_version != cur), key=int)
        registry.promote('flights', other, reason='test: back to the newer version', force=True, actor='test', cfg=cfg)
        cur = other
    registry.rollback('flights', reason='rollback drill', actor='on-call', cfg=cfg)
    registry.promote('flights', cur, reason='rollback drill over: back to the champion', force=True, actor='on-call', cfg=cfg)
    return cur


@pytest.fixture(scope='module')
def green(tmp_path_factory):
    "The sandbox after what the demo does for readiness: runbooks installed and checked, a channel test, a drill, traffic, a card, the dashboard."
    import httpx
    cfg, env = built_sandbox(tmp_path_factory)
    folder = Path(cfg.root)/'runbooks'
    shutil.rmtree(folder, ignore_errors=True)
    r = _cli(env, cfg.root, 'runbooks', 'install')
    assert r.returncode == 0, r.stderr
    rd.record_runbook_check(rd.check_runbooks(folder), folder, cfg=cfg)
    assert alerts.send_test_alert(cfg).ok
    prod = _rollback_drill(cfg)
    with rd.running_service(cfg, 'flights', env) as url:
        for _ in range(5):
            assert httpx.post(url + '/invocations', json={'dataframe_records': [PROBE]}, timeout=10).status_code == 200
    registry.card('flights', prod, cfg=cfg).save(cfg.reports_dir)
    from mlprod.dashboard import build_dashboard
    build_dashboard(cfg)
    return cfg, env


def test_all_green(green):
    cfg, _ = green
    sc = rd.readiness('flights', cfg)
    print(sc.text())
    assert sc.ok, sc.text()
    assert sc.warning_signs == ()
    assert len(sc.items) == 13 and {i.category for i in sc.items} == set(rd.CATEGORIES)
    assert 'successful request(s) for version' in sc['served and healthy'].evidence
    from mlprod.alerts import DEFAULT_RULES
    assert f'the {len(DEFAULT_RULES)} default rules' in sc['alert rules'].evidence
    assert sc['rollback drill'].evidence.startswith('rollback v') and 'rollback drill' in sc['rollback drill'].evidence
    assert sc['last retraining'].evidence.split()[0] in ('promoted', 'staged', 'rejected')


def test_cli_green_writes_html_and_json(green):
    cfg, env = green
    r = _cli(env, cfg.root, 'readiness', 'flights', '--json')
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out['ok'] and out['passed'] == out['total'] == 13
    page = Path(out['report'])
    assert page.parent == Path(cfg.reports_dir)/'flights'/'readiness' and page.with_suffix('.json').is_file()
    html = page.read_text()
    assert '../../../runbooks/rollback.md' in html and '<script' not in html


def test_live_service_health(green):
    cfg, env = green
    with rd.running_service(cfg, 'flights', env) as url:
        sc = rd.readiness('flights', cfg, serve_url=url)
    assert sc['served and healthy'].passed, sc['served and healthy']
    sc = rd.readiness('flights', cfg, serve_url=f"http://127.0.0.1:{free_port()}")
    assert not sc['served and healthy'].passed and 'ConnectError' in sc['served and healthy'].reason


def test_no_retrain_schedule_turns_automation_red(green):
    "An mlprod.toml without the retrain schedule: the item is red with a reason, the warning sign is listed, the CLI exits 1."
    cfg, env = green
    toml = Path(cfg.root)/'mlprod.toml'
    text = toml.read_text()
    assert 'retrain = "0 3 1 * *"' in text
    try:
        toml.write_text(text.replace('retrain = "0 3 1 * *"', ''))
        cfg2 = parse_config(toml.read_text(), root=cfg.root, source=str(toml), env={})
        sc = rd.readiness('flights', cfg2)
        assert [i.name for i in sc.failed] == ['retraining scheduled']
        assert 'retraining is manual' in sc['retraining scheduled'].reason
        assert any(w.startswith('manual retraining') for w in sc.warning_signs)
        r = _cli(env, cfg.root, 'readiness', 'flights', '--no-save')
        assert r.returncode == 1 and 'FAIL  automation' in r.stdout, r.stdout + r.stderr
    finally:
        toml.write_text(text)


def test_deleted_runbook_turns_documentation_red(green):
    "Deleting a runbook: 'runbooks present' names it, 'runbooks tested' says the folder changed since its check."
    cfg, env = green
    p = Path(cfg.root)/'runbooks'/'serving-down.md'
    saved = p.read_bytes()
    try:
        p.unlink()
        sc = rd.readiness('flights', cfg)
        assert {i.name for i in sc.failed} == {'runbooks present', 'runbooks tested'}
        assert 'serving-down.md' in sc['runbooks present'].reason and 'mlprod runbooks install' in sc['runbooks present'].reason
        assert 'changed since the last check' in sc['runbooks tested'].reason
    finally:
        p.write_bytes(saved)
    assert rd.readiness('flights', cfg).ok


def test_readiness_job(green):
    "The readiness job notebook runs, saves a scorecard and publishes the score."
    from mlprod.jobs import run_job
    cfg, _ = green
    run = run_job('readiness', {'model': 'flights'}, cfg=cfg, timeout=300, dashboard=False)
    assert run.ok, run.error
    assert run.figures['readiness_score'] == 1.0 and run.figures['passed'] == run.figures['items'] == 13
    assert run.figures['status'] == 'SUCCESS'
    assert 'Production readiness of flights' in Path(run.report_path).read_text()
