"""Every kind of report mlprod writes opens in headless Chromium with no network: no console error, no request to a
non-file URL, charts drawn (inline SVG with alternative text), each page under 1.5 MB. Screenshots land in
reports/screenshots/ for a person to look at."""
import dataclasses
from pathlib import Path
import pytest
from conftest import ROOT, open_offline, require_system_package, window

MAX_BYTES = 1_500_000


@pytest.fixture(scope='module')
def site(tmp_path_factory, flights):
    """A project with two registered versions (v1 in production, then v2 promoted after a comparison), monitor runs
    over three windows (the last as a job), the model card, a batch scoring job with rejected rows, a readiness scorecard
    and the dashboard: every report kind, on disk."""
    from mlprod.config import parse_config, DEFAULT_TOML
    from mlprod.recipes import train_lightgbm
    from mlprod import registry
    from mlprod.evaluate import compare_versions
    from mlprod.monitor import monitor
    from mlprod.jobs import run_job
    from mlprod.readiness import readiness
    from mlprod.dashboard import build_dashboard
    root = tmp_path_factory.mktemp('reports_site')
    toml = DEFAULT_TOML.replace('reference_sample = 100000', 'reference_sample = 5000')
    (root/'mlprod.toml').write_text(toml)
    cfg = parse_config(toml, root=root, env={})
    mc = cfg.model('flights')
    train = window(flights, '2013-01-01', '2013-02-15').sample(12000, random_state=0)
    fit = lambda n: train_lightgbm(train, dataclasses.replace(mc, params={'n_estimators': n, 'num_leaves': 15, 'n_jobs': 1}))
    v1 = registry.register(fit(15), 'flights', train, cfg=cfg).version
    registry.promote('flights', v1, 'production', reason='first version', force=True, cfg=cfg)
    v2 = registry.register(fit(60), 'flights', train, cfg=cfg).version
    reports = {}
    march = run_job('monitor', {'start': '2013-03-01', 'end': '2013-03-15'}, cfg=cfg)  # v1 in production
    assert march.ok, march.error_text
    vc = compare_versions('flights', v2, 'production', start='2013-03-01', end='2013-03-15', cfg=cfg, log_to_mlflow=False,
                          n_boot=100, measure_ops=False)
    reports['comparison'] = Path(vc.report_path)
    registry.promote('flights', v2, 'production', reason='the comparison', decision=vc if vc.ok else None, force=not vc.ok, cfg=cfg)
    april = monitor('flights', '2013-04-01', '2013-04-15', cfg=cfg, log_to_mlflow=False, alerts=False, save_report=True, sample_rows=2000)
    reports['monitor'] = Path(april.report_path)
    may = run_job('monitor', {'start': '2013-05-01', 'end': '2013-05-15'}, cfg=cfg)
    assert may.ok, may.error_text
    reports['job'] = Path(may.report_path)
    reports['card'] = Path(cfg.reports_dir)/'flights'/'card'/f'v{v2}.html'  # written by the move to production
    week = window(flights, '2013-05-15', '2013-05-18').reset_index(drop=True)
    week.insert(0, 'flight_id', range(len(week)))
    week['temp'] = week['temp'].astype(object).where(week.index >= 10, 'hot')  # ten garbage values in a CSV export
    week.to_csv(root/'week.csv', index=False)
    scored = run_job('score', {'input': str(root/'week.csv'), 'output': str(root/'scored'/'week.parquet'), 'id_column': 'flight_id',
                               'time_column': 'time_hour', 'max_reject_share': 0.05}, cfg=cfg)
    assert scored.ok, scored.error_text
    reports['score'] = Path(scored.report_path)
    reports['readiness'] = readiness('flights', cfg=cfg).save(cfg.reports_dir)
    reports['dashboard'] = build_dashboard(cfg)
    return cfg, reports, (april, vc)




CHARTS_JS = """() => [...document.querySelectorAll('svg.mlprod-chart')].map(s => ({
    label: s.getAttribute('aria-label') || '', role: s.getAttribute('role'),
    title: (s.querySelector('title') || {}).textContent || '', width: s.getBoundingClientRect().width,
    texts: s.querySelectorAll('text').length}))"""


def open_report(browser, path: Path, shot: str):
    "Open `path` offline; return (page text, console errors, non-file requests, charts [{label, role, title, width, texts}])."
    return open_offline(browser, path, shot, CHARTS_JS)


def check_page(browser, path: Path, shot: str, min_charts: int, titles=()):
    "The checks every report passes; returns the page text and the chart titles."
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    text, errors, foreign, charts = open_report(browser, path, shot)
    assert errors == [], errors
    assert foreign == [], foreign
    assert len(charts) >= min_charts, [c['label'] for c in charts]
    for c in charts:  # alternative text on every chart, drawn with its axis labels and readable (not squeezed)
        assert c['role'] == 'img' and c['label'] and c['title'] == c['label'], c
        assert c['texts'] >= 2 and c['width'] > 200, c
    labels = [c['label'] for c in charts]
    for t in titles: assert any(t in l for l in labels), (t, labels)
    return text, labels


def test_comparison_report(site, browser):
    cfg, reports, (april, vc) = site
    text, labels = check_page(browser, reports['comparison'], 'report_comparison.png', 5,
                              ['ROC curve', 'Precision–recall', 'Calibration', 'score by true class', 'by slice'])
    assert vc.comparison.curves['roc'] and 'Curves' in text and 'Slices' in text


def test_monitor_report(site, browser):
    cfg, reports, (april, vc) = site
    text, labels = check_page(browser, reports['monitor'], 'report_monitor.png', 5,
                              ['Performance per monitored window', 'Share of drifted columns', 'prediction', 'Missing values'])
    assert 'Reference vs window' in text and 'Over the monitored windows' in text
    html = reports['monitor'].read_text()
    assert 'v1 → v2' in html  # the version change between the two monitored windows
    assert '<script' not in html and 'monitor-evidently/' in html  # Evidently's page (its own script) is beside it, linked
    ev = reports['monitor'].parent.parent/'monitor-evidently'/reports['monitor'].name
    assert ev.is_file() and '<script' in ev.read_text()


def test_job_report(site, browser):
    cfg, reports, _ = site
    text, labels = check_page(browser, reports['job'], 'report_monitor_job.png', 3, ['Rows per day', 'prediction'])
    html = reports['job'].read_text()
    # nbconvert gives an <img> without alt this placeholder and warns 'Alternative text is missing on N image(s)'
    assert 'No description has been provided' not in html and '<img' not in html
    assert 'Monitoring report' in text


def test_readiness_report(site, browser):
    cfg, reports, _ = site
    text, _ = check_page(browser, reports['readiness'], 'report_readiness.png', 0)
    assert 'flights' in text


def test_dashboard(site, browser):
    cfg, reports, _ = site
    text, labels = check_page(browser, reports['dashboard'], 'report_dashboard.png', 2, ['monitor · drift share'])
    html = reports['dashboard'].read_text()
    assert 'window end (UTC)' in html and '>2013-03-15<' in html and '>2013-05-' in html  # on the monitored windows, not run times (2026)
    assert 'promote v2' in html  # the version change between the March and May windows, named by the release history



def test_model_card(site, browser):
    cfg, reports, _ = site
    text, _ = check_page(browser, reports['card'], 'report_card.png', 0)
    assert 'flights' in text and 'production' in text


def test_batch_scoring_job_report(site, browser):
    cfg, reports, _ = site
    text, labels = check_page(browser, reports['score'], 'report_score_job.png', 2, ['Rejected rows by column', 'Predictions of flights'])
    assert 'Batch scoring report' in text and 'temp' in text
