"""A missing categorical value is scored as the user's pipeline scores the missing marker of its training data.

The users' project mpls_stops trains SimpleImputer(strategy='constant') -> OneHotEncoder(handle_unknown='ignore') on
two text columns whose missing values pandas reads as NaN (personSearch, vehicleSearch), then LogisticRegression.
scikit-learn imputes NaN but not None in an object column, so handing the model None for a missing value (what
`frame_of` and the compiled encoder's `missing` row did before `mlprod.scoring.missing_markers`) scored 456 of 3,338
rows of April-May 2017 up to 0.047 away from the pipeline's own `predict_proba`, in serving and batch alike. Here the
served scorers (compiled and generic) and `score_local` (its default predictor, the served encoder, the generic
path) must equal `pipeline.predict_proba` of the same rows to 1e-9."""
import importlib.util, math, shutil
from pathlib import Path

import numpy as np, pandas as pd, pytest

PROJECT = Path(__file__).parent / 'userprojects' / 'mpls_stops'
TRAIN, LATER = ('2017-01-01', '2017-04-01'), ('2017-04-01', '2017-06-01')
TEXT_WITH_MISSING = ['personSearch', 'vehicleSearch']


@pytest.fixture(scope='module')
def mpls(tmp_path_factory):
    "mpls_stops registered zero-config from Python and promoted: (LoadedModel, the later rows with a row_id, the module)."
    from mlprod import registry
    from mlprod.config import get_config
    root = tmp_path_factory.mktemp('missing-mpls')
    shutil.copytree(PROJECT, root, dirs_exist_ok=True)
    spec = importlib.util.spec_from_file_location('my_src_missing_mpls', root / 'my_src.py')
    src = importlib.util.module_from_spec(spec); spec.loader.exec_module(src)
    df = src.load(*TRAIN)
    assert df[TEXT_WITH_MISSING].isna().any(axis=1).sum() > 100  # the training data has missing text, as NaN
    cfg = get_config(root)
    v = registry.register(src.train(df), src.NAME, df, target=src.TARGET, time_column=src.TIME_COLUMN, cfg=cfg)
    registry.promote(src.NAME, v.version, reason='missing markers', force=True, cfg=cfg)
    rows = src.load(*LATER)
    rows.insert(0, 'row_id', np.arange(len(rows), dtype='int64'))
    return registry.load(src.NAME, 'production', get_config(root)), rows, src


def _want(lm, rows) -> np.ndarray:
    "The pipeline's own positive-class probability of the rows, as pandas read them (NaN for missing text)."
    assert all(rows[c].dtype == object for c in TEXT_WITH_MISSING)
    return lm.model.predict_proba(rows[list(lm.features)])[:, list(lm.model.classes_).index(lm.positive_class)]


def test_served_scorers_score_missing_text_as_the_pipeline(mpls):
    "`mlprod.serve.prepare`: the compiled scorer (many rows and one row at a time) and the generic scorer equal the pipeline on rows with NaN text."
    from mlprod.serve import prepare
    lm, rows, _ = mpls
    feats = list(lm.features)
    miss = rows[TEXT_WITH_MISSING].isna().any(axis=1).to_numpy()
    assert miss.sum() > 100, miss.sum()
    want = _want(lm, rows)
    cols = {c: rows[c].tolist() for c in feats}  # as a JSON request brings them after parsing: NaN or None for missing
    assert any(isinstance(v, float) and math.isnan(v) for v in cols['personSearch'])
    fast = prepare(lm).scorer
    assert fast.kind == 'fast', getattr(fast, 'reason', None)
    np.testing.assert_allclose(fast(cols, len(rows)), want, rtol=0, atol=1e-9)
    nulls = {c: [None if (c in TEXT_WITH_MISSING and isinstance(v, float) and math.isnan(v)) else v for v in vals] for c, vals in cols.items()}
    np.testing.assert_allclose(fast(nulls, len(rows)), want, rtol=0, atol=1e-9)  # JSON null: the same missing value
    for i in np.flatnonzero(miss)[:25]:  # the one-row path of the service
        np.testing.assert_allclose(fast({c: [cols[c][i]] for c in feats}, 1), want[i:i + 1], rtol=0, atol=1e-9)
    generic = prepare(lm, prefer='generic').scorer
    assert generic.kind == 'generic'
    np.testing.assert_allclose(generic(nulls, len(rows)), want, rtol=0, atol=1e-9)
    P = generic.proba({c: v[:50] for c, v in nulls.items()}, 50)
    np.testing.assert_allclose(P, lm.model.predict_proba(rows[feats].head(50)), rtol=0, atol=1e-9)


@pytest.mark.parametrize('how', ['default', 'encoder', 'generic'])
def test_score_local_scores_missing_text_as_the_pipeline(mpls, tmp_path, how):
    "`score_local` (its default predictor, the served encoder with compiled=False, the generic scorer) equals the pipeline on every row."
    from mlprod.batch import batch_model, score_local
    lm, rows, src = mpls
    path = tmp_path / 'in.parquet'
    rows.drop(columns=[src.TARGET]).to_parquet(path, index=False)
    model = batch_model(lm, prefer='generic') if how == 'generic' else lm
    r = score_local(model, path, tmp_path / 'out.parquet', id_column='row_id', time_column=src.TIME_COLUMN,
                    cache_dir=tmp_path / 'compiled', max_reject_share=None, compiled=how != 'encoder')
    assert r.n_rejected == 0 and r.n_scored == len(rows), r
    out = pd.read_parquet(r.output)
    out = out.assign(row_id=out['row_id'].astype('int64')).sort_values('row_id').reset_index(drop=True)
    assert out['row_id'].tolist() == rows['row_id'].tolist()
    np.testing.assert_allclose(out['prediction'], _want(lm, rows), rtol=0, atol=1e-9)
