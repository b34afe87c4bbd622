"""The dashboard and a job report open in headless Chromium with no network: no console errors, no
request to a non-file URL, the expected text; screenshots land in reports/screenshots/ for a person to look at."""
from pathlib import Path
import pytest
from conftest import ROOT, open_offline, require_system_package



@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "A project with a successful monitor run, a failing job with hostile text, and a dashboard."
    from mlprod.config import parse_config, DEFAULT_TOML
    from mlprod.jobs import run_job
    root = tmp_path_factory.mktemp('site')
    cfg = parse_config(DEFAULT_TOML, root=root, env={})
    ok = run_job('monitor', {'start': '2013-03-01', 'end': '2013-03-15'}, cfg=cfg, dashboard=False)
    ok2 = run_job('monitor', {'start': '2013-06-01', 'end': '2013-06-15'}, cfg=cfg, dashboard=False)
    bad = run_job('smoke', {'fail': True, 'message': '<script>alert(1)</script>'}, cfg=cfg)
    assert ok.ok and ok2.ok and not bad.ok
    return cfg, ok2, bad


def open_page(browser, path: Path, shot: str):
    "Open `path` from disk; return the page text, console errors, non-file requests, and whether a script ran."
    return open_offline(browser, path, shot, 'typeof window.__pwned')


def test_dashboard_renders_offline(site, browser):
    cfg, ok, bad = site
    text, errors, foreign, _ = open_page(browser, cfg.reports_dir/'index.html', 'dashboard.png')
    assert errors == [] and foreign == []
    assert 'model health' in text and 'Model flights' in text and 'Open alerts' in text
    assert 'job smoke (project) failed' in text and '<script>alert(1)</script>' in text  # shown as text, not executed
    assert 'monitor · drift share' in text and 'never ran' in text and 'Project jobs' in text


def test_reports_render_offline(site, browser):
    cfg, ok, bad = site
    text, errors, foreign, _ = open_page(browser, Path(ok.report_path), 'monitor_report.png')
    assert errors == [] and foreign == []
    assert 'Monitoring report' in text and 'What to do' in text and 'Data drift' in text
    text, errors, foreign, _ = open_page(browser, Path(bad.report_path), 'failed_report.png')
    assert errors == [] and foreign == []
    assert text.index('This job failed') < text.index('The job runner works')
    assert 'RuntimeError' in text and '<script>alert(1)</script>' in text
