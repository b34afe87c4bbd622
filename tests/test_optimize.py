"Optimized backends on real flights data: equivalence (NaN, unseen categories), refusal, registration, serving, CLI."
import json
import numpy as np, pandas as pd, pytest
from mlprod.config import get_config
from mlprod.core import Status
from mlprod.recipes import train_lightgbm
from mlprod import optimize as opt
from mlprod.scoring import booster_string
from conftest import window


@pytest.fixture(scope='module')
def flights(flights):
    "From the session's 2013 `flights` (conftest): a default-config model trained on January, held-out February rows with edge cases."
    mc = get_config().model('flights')
    train = window(flights, '2013-01-01', '2013-02-01')
    model = train_lightgbm(train, mc)
    hold = window(flights, '2013-02-01', '2013-02-15').sample(3000, random_state=1).reset_index(drop=True)
    rng = np.random.default_rng(0)
    hold.loc[rng.choice(len(hold), 100, replace=False), 'dest'] = 'XXX'          # unseen destination
    hold.loc[rng.choice(len(hold), 30, replace=False), 'carrier'] = None        # missing category
    hold.loc[rng.choice(len(hold), 50, replace=False), 'origin'] = 'ZZZ'        # unseen origin
    for c in ('temp', 'pressure', 'wind_speed', 'distance'):
        hold.loc[rng.choice(len(hold), 80, replace=False), c] = np.nan          # missing numbers
    return mc, train, model, hold


def test_every_backend_scores_flights_like_the_pipeline(flights):
    mc, _, model, hold = flights
    assert hold.isna().any().any() and (hold.dest == 'XXX').sum() == 100
    res = opt.optimize_model(model, hold, repeats=100, batch_rows=10_000)
    print('\n' + res.table())
    ref = model.predict_proba(hold[list(mc.features)])[:, 1]
    for r in res.backends:
        if r.backend == 'compiled-trees' and r.status == Status.SKIPPED: continue
        assert r.status == Status.SUCCESS, r
        assert r.max_abs_diff <= 1e-5 and r.single_p50_us and r.core_p50_us and r.batch_ms and r.size_bytes
    assert res['lightgbm-numpy'].max_abs_diff == 0.0
    assert 0 < res['onnx'].max_abs_diff < 1e-6  # float32 inside ONNX Runtime
    # the rows that matter, row by row, through the winner and through each rebuilt backend
    tricky = hold[(hold.dest == 'XXX') | hold.carrier.isna() | (hold.origin == 'ZZZ') | hold.temp.isna()]
    assert len(tricky) > 200
    enc, est = opt.encoding_of(model)
    assert res.rows == len(hold) + len(opt.edge_rows(hold, enc))  # held-out + probe rows (edges, categories, missing, unseen)
    for build in (opt.build_lightgbm_numpy, opt.build_onnx):
        m = build(est, enc)
        np.testing.assert_allclose(m.predict_proba(tricky)[:, 1], model.predict_proba(tricky[list(mc.features)])[:, 1], rtol=0, atol=1e-5)
    # one record at a time (what a server sees)
    for rec in tricky.head(20).to_dict('records'):
        p = model.predict_proba(pd.DataFrame([rec])[list(mc.features)])[0, 1]
        assert abs(res.winner_model.predict_proba(rec)[0, 1] - p) <= 1e-5
    # the optimized single-row path beats the pipeline by a wide margin
    assert res.speedup(res.winner) > 5, res.table()
    assert res.to_dict()['winner'] == res.winner and json.dumps(res.to_dict())


def test_deviating_backends_are_refused_with_the_difference(flights):
    mc, _, model, hold = flights
    res = opt.optimize_model(model, hold, backends=['onnx', 'lightgbm-numpy'], tolerance=0, repeats=20, batch_rows=1000)
    onnx = res['onnx']
    assert onnx.status == Status.FAIL and onnx.converted and onnx.max_abs_diff > 0
    assert f"max abs difference {onnx.max_abs_diff:.3g} at row" in onnx.message and 'exceeds the tolerance 0' in onnx.message
    assert onnx.single_p50_us is None  # a refused backend is not timed
    assert res.winner == 'lightgbm-numpy' and 'onnx: refused' in res.table()

    class Perturbed(opt.LightGBMNumpyClassifier):
        "Right on most rows, wrong by 2e-4 when the flight is long."
        def score_matrix(self, A):
            p = super().score_matrix(A)
            j = self.encoding.plans[list(self.encoding.features).index('distance')].positions[0]  # its column in the encoded matrix
            return p + 2e-4 * (A[:, j] > 2000)
    opt.register_backend('perturbed', lambda est, enc: Perturbed(enc, booster_string(est)))
    try:
        res = opt.optimize_model(model, hold, backends=['perturbed'], repeats=20, batch_rows=1000)
    finally: del opt.BACKENDS['perturbed']
    r = res['perturbed']
    assert r.status == Status.FAIL and abs(r.max_abs_diff - 2e-4) < 1e-9
    assert hold.loc[r.worst_row, 'distance'] > 2000
    assert not res.ok and res.winner is None and res.winner_model is None and 'nothing registered' in res.summary()


def test_registered_optimized_version_loads_and_serves_the_same(flights, project):
    from mlprod import registry
    from mlprod.serve import prepare
    mc, train, model, hold = flights
    v1 = registry.register(model, 'flights', train)
    res = opt.optimize('flights', v1.version, holdout=hold, backends=['lightgbm-numpy', 'onnx'], repeats=50, batch_rows=2000)
    assert res.ok and res.new_version == str(int(v1.version) + 1), res.table()
    src, new = registry.load('flights', v1.version), registry.load('flights', res.new_version)
    assert type(new.model).__name__ in ('LightGBMNumpyClassifier', 'OnnxBinaryClassifier')
    assert new.tags['mlprod.optimized_from'] == v1.version and new.tags['mlprod.backend'] == res.winner
    assert new.features == src.features and new.categorical == src.categorical and new.schema == src.schema
    assert new.tags['mlprod.window_end'] == src.tags['mlprod.window_end']
    np.testing.assert_allclose(new.predict_scores(hold), src.predict_scores(hold), rtol=0, atol=1e-5)
    # the scoring service takes it like any other version
    served = prepare(new, 'staging')
    cols = {c: hold[c].head(50).tolist() for c in new.features}
    cols = {c: [None if isinstance(v, float) and v != v else v for v in vals] for c, vals in cols.items()}
    np.testing.assert_allclose(served.scorer(cols, 50), src.predict_scores(hold.head(50)), rtol=0, atol=1e-5)


def test_cli_optimize_prints_the_table(flights, project, capsys, monkeypatch):
    from mlprod import registry, cli
    mc, train, model, _ = flights
    v1 = registry.register(model, 'flights', train)
    code = cli.main(['optimize', 'flights', v1.version, '--no-register', '--backend', 'lightgbm-numpy', '--backend', 'onnx'])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'not registered' in out and 'lightgbm-numpy' in out and 'onnx' in out and '1-row p50 µs' in out
    assert registry.resolve_version('flights', 'staging') is None
    with pytest.raises(Exception): registry.load('flights', str(int(v1.version) + 1))
    code = cli.main(['optimize', 'flights', '99', '--no-register'])
    assert code == 2 and "got '99'" in capsys.readouterr().err
