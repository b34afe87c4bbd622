"""Champion vs challenger from the registry on real flights: the comparison, its records, the promotion it allows or blocks, the CLI."""
import dataclasses, json, os, re, types
import numpy as np, pytest
import sqlalchemy as sa
from conftest import window

FAST = {'n_estimators': 60, 'n_jobs': 1}  # fewer trees than the config's 200, one thread: quick on a busy machine
JULY = ('2013-07-01', '2013-08-01')


@pytest.fixture(scope='module')
def flights(flights, tmp_path_factory):
    "From the session's 2013 `flights` (conftest), a project with three versions of model `flights`: v1 trained on Jan–Feb, v2 on May–June, v3 on May–June with shuffled labels."
    from mlprod.config import get_config, reset_config, DEFAULT_TOML
    from mlprod.recipes import train_lightgbm
    from mlprod import registry
    mp = pytest.MonkeyPatch()
    for k in ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG'): mp.delenv(k, raising=False)
    root = tmp_path_factory.mktemp('evaluate')
    mp.chdir(root); mp.setenv('MLPROD_ACTOR', 'tester')
    # one-row timings on a busy test machine are noisy: a generous latency budget keeps the decision about accuracy
    (root/'mlprod.toml').write_text(DEFAULT_TOML, encoding='utf-8')
    reset_config()
    cfg = get_config()
    mc = dataclasses.replace(cfg.model('flights'), params=FAST)
    jan_feb, may_jun = window(flights, '2013-01-01', '2013-03-01'), window(flights, '2013-05-01', '2013-07-01')
    shuffled = may_jun.assign(delayed=np.random.default_rng(0).permutation(may_jun['delayed'].to_numpy()))
    versions = [registry.register(train_lightgbm(df, mc), 'flights', df, window=w, params=FAST, cfg=cfg).version
                for df, w in ((jan_feb, ('2013-01-01', '2013-03-01')), (may_jun, ('2013-05-01', '2013-07-01')),
                              (shuffled, ('2013-05-01', '2013-07-01')))]
    assert versions == ['1', '2', '3']
    yield types.SimpleNamespace(cfg=cfg, root=root, prior=float(jan_feb['delayed'].mean()))
    registry.clear_cache(); reset_config(); mp.undo()


def _cli(monkeypatch, capsys, *argv):
    "Run `mlprod ARGV` in-process (the CLI as installed: no command added); (exit code, stdout, stderr)."
    from mlprod import cli
    capsys.readouterr()
    code = cli.main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def _stored(cfg, cid):
    from mlprod import db, registry
    with db.engine(cfg.db_url).connect() as conn:
        return conn.execute(sa.select(registry.comparisons).where(registry.comparisons.c.id == cid)).one_or_none()


def test_acceptance_compare_decide_and_promote(flights, monkeypatch, capsys):
    "Baseline → v1 in production; v2 (May–June) beats v1 (Jan–Feb) on July and is promoted with the decision; a shuffled-label v3 is rejected and blocked."
    from mlprod.evaluate import compare_versions
    from mlprod.registry import promote, resolve_version, history, PromotionBlocked
    from mlflow import MlflowClient
    cfg = flights.cfg

    # No champion yet: v1 against the prior baseline, fitted on v1's training snapshot (not on the March labels).
    r0 = compare_versions('flights', 1, start='2013-03-01', end='2013-04-01', cfg=cfg, n_boot=300)
    assert (r0.champion_version, r0.comparison.champion_name, r0.decision) == (None, 'prior baseline', 'promote'), r0.text()
    from mlprod.data import load_flights
    y_march = load_flights('2013-03-01', '2013-04-01')['delayed'].to_numpy()
    assert r0.row('brier').champion == pytest.approx(np.mean((flights.prior - y_march) ** 2), rel=1e-9)
    assert r0.row('brier').champion != pytest.approx(np.mean((y_march.mean() - y_march) ** 2), rel=1e-9)  # not the March rate
    assert _stored(cfg, r0.id).champion_version is None
    promote('flights', 1, reason='beats the prior baseline on March', decision=r0.id, cfg=cfg)
    assert resolve_version('flights', 'production', cfg) == '1'

    # The acceptance comparison: v2 vs the production champion v1 on July, default 1000 bootstrap replicates.
    r = compare_versions('flights', 2, start=JULY[0], end=JULY[1], cfg=cfg)
    with capsys.disabled(): print('\n' + r.text())
    head = r.row()
    assert (r.model, r.champion_version, r.challenger_version, r.champion_ref) == ('flights', '1', '2', 'production')
    assert head.metric == 'roc_auc' and head.test == 'DeLong'
    assert 0.6 < head.champion < head.challenger < 0.8
    assert 0 < head.ci_low < head.diff < head.ci_high and head.p_value < 1e-6
    assert r.comparison.n_rows > 25_000 and r.window == ('2013-07-01T00:00:00+00:00', '2013-08-01T00:00:00+00:00')
    assert {s.column for s in r.comparison.slices} == {'carrier', 'origin'}
    assert {s.value for s in r.comparison.slices if s.column == 'origin' and s.evaluated} == {'EWR', 'JFK', 'LGA'}
    assert r.decision == 'promote' and r.flagged_slices == [], r.text()
    assert r.comparison.checks['data:window'].status == 'SUCCESS'
    assert r.comparison.checks['gate:latency_p50_ms'].status == 'SUCCESS'  # measured, and within the configured budget

    # recorded where promote looks, logged to MLflow, reported as a self-contained page
    row = _stored(cfg, r.id)
    assert (row.model, row.champion_version, row.challenger_version, row.decision) == ('flights', '1', '2', 'promote')
    assert json.loads(row.payload)['comparison']['metrics'][0]['ci_low'] == pytest.approx(head.ci_low)
    client = MlflowClient(cfg.tracking_uri)
    run = client.get_run(r.run_id)
    assert run.info.status == 'FINISHED'
    assert (run.data.tags['mlprod.decision'], run.data.tags['mlprod.comparison_id']) == ('promote', r.id)
    m = run.data.metrics
    assert m['champion.roc_auc'] == pytest.approx(head.champion) and m['challenger.roc_auc'] == pytest.approx(head.challenger)
    assert m['diff.roc_auc'] == pytest.approx(head.diff) and m['p_value.roc_auc'] == pytest.approx(head.p_value)
    assert m['ci_low.roc_auc'] == pytest.approx(head.ci_low) and m['ci_high.roc_auc'] == pytest.approx(head.ci_high)
    assert {'champion.brier', 'challenger.latency_p50_ms', 'slices_flagged'} <= set(m)
    assert sorted(a.path for a in client.list_artifacts(r.run_id)) == ['comparison.html', 'comparison.json']
    (flights.root/'dl').mkdir(exist_ok=True)
    logged = json.loads(open(client.download_artifacts(r.run_id, 'comparison.json', str(flights.root/'dl')), encoding='utf-8').read())
    assert logged['id'] == r.id and logged['decision'] == 'promote'
    report = flights.root/'reports'/'flights'/'compare'
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d{6}Z(-\d+)?\.html', os.path.basename(r.report_path))
    assert os.path.dirname(r.report_path) == str(report.resolve())
    page = open(r.report_path, encoding='utf-8').read()
    from mlprod.reports import external_references  # an SVG's xmlns names a namespace, it loads nothing
    assert '<script' not in page and external_references(page) == [], external_references(page)
    assert f"{head.challenger:.4g}" in page and r.id in page and 'carrier' in page

    # promote honours the decision, by id through the CLI
    code, out, err = _cli(monkeypatch, capsys, 'promote', 'flights', 2, '--to', 'production', '--reason', 'v2 beats v1 on July', '--decision', r.id)
    assert code == 0, err
    assert resolve_version('flights', 'production', cfg) == '2'
    assert history('flights', cfg=cfg)[-1].decision_id == r.id

    # a challenger trained on shuffled labels is rejected, and its comparison cannot promote it
    bad = compare_versions('flights', 3, start=JULY[0], end=JULY[1], cfg=cfg, n_boot=300)
    with capsys.disabled(): print(bad.text())
    assert bad.champion_version == '2' and bad.decision == 'reject'
    assert bad.row().ci_high < 0 and bad.row().p_value < 1e-6
    before = len(history('flights', cfg=cfg))
    with pytest.raises(PromotionBlocked, match="its decision is 'reject'"):
        promote('flights', 3, reason='try anyway', decision=bad.id, cfg=cfg)
    code, out, err = _cli(monkeypatch, capsys, 'promote', 'flights', 3, '--reason', 'try anyway', '--decision', bad.id)
    assert code == 1 and 'reject' in err
    # an old decision about another champion does not allow a move either
    with pytest.raises(PromotionBlocked, match='production is version 2 now'):
        promote('flights', 1, reason='back to v1', decision=r0.id, cfg=cfg)
    assert resolve_version('flights', 'production', cfg) == '2' and len(history('flights', cfg=cfg)) == before


def test_cli_compare_exit_codes(flights, monkeypatch, capsys):
    "mlprod compare exits 0 for promote, 1 for reject or needs_review, 2 for errors, and prints the figures."
    fast = ('--n-boot', 200, '--no-ops')
    code, out, err = _cli(monkeypatch, capsys, 'compare', 'flights', '--challenger', 2, '--champion', 1, '--window', *JULY, *fast)
    assert code == 0, err + out
    assert 'decision: PROMOTE' in out and 'roc_auc: v1 0.' in out and '95% CI' in out and 'p=' in out
    assert 'slices flagged: 0 of' in out and re.search(r'report: .*reports/flights/compare/.*\.html', out)

    code, out, err = _cli(monkeypatch, capsys, 'compare', 'flights', '--challenger', 3, '--champion', 2, '--window', *JULY, *fast, '--json')
    assert code == 1, err
    d = json.loads(out)
    assert (d['decision'], d['champion_version'], d['challenger_version']) == ('reject', '2', '3')
    assert _stored(flights.cfg, d['id']).decision == 'reject'

    # a window inside v2's training data: flagged, so at best needs_review → exit 1
    code, out, err = _cli(monkeypatch, capsys, 'compare', 'flights', '--challenger', 2, '--champion', 1, '--window', '2013-06-15', '2013-07-15',
                          *fast, '--no-mlflow', '--no-report')
    assert code == 1 and 'decision: NEEDS_REVIEW' in out and 'overlaps the training data of v2' in out

    for argv, says in ((('--challenger', 9), "version: got '9'"), (('--challenger', 2, '--champion', 2), 'also the champion'),
                       (('--challenger', 3, '--window', '2013-08-01', '2013-07-01'), 'is not before end'),
                       (('--challenger', 2, '--champion', 'canary'), "allowed: 'staging' or 'production'")):
        code, out, err = _cli(monkeypatch, capsys, 'compare', 'flights', *argv, *fast)
        assert code == 2 and says in err and err.count('\n') == 1, (argv, err)
