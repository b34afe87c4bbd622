"Statistical properties of mlprod.compare (simulations) and a real-data champion/challenger check."
import pickle, time
import numpy as np, pandas as pd, pytest
from mlprod.compare import (compare, delong, mcnemar, paired_bootstrap, roc_auc, brier, PriorBaseline, Gate,
                            MinSamples, SliceGate)


def _population(rng, n, signal_a=1.0, signal_b=0.8):
    "Labels and two correlated probability scores; the champion (a) carries more signal than the challenger (b)."
    y = (rng.random(n) < 0.35).astype(int)
    shared = rng.normal(size=n)
    za = signal_a * y + 0.7 * shared + 0.7 * rng.normal(size=n)
    zb = signal_b * y + 0.7 * shared + 0.7 * rng.normal(size=n)
    sig = lambda z: 1 / (1 + np.exp(-(z - 0.4)))
    return y, sig(za), sig(zb)


def test_bootstrap_and_delong_intervals_cover_the_true_difference():
    "95% intervals of challenger − champion cover the population difference near 95% of the time."
    y, a, b = _population(np.random.default_rng(123), 2_000_000)
    true_auc, true_brier = roc_auc(y, b) - roc_auc(y, a), brier(y, b) - brier(y, a)
    assert true_auc < -0.02 and true_brier > 0  # a real difference, so coverage is not about zero
    rng = np.random.default_rng(7)
    hits = {'boot_auc': 0, 'boot_brier': 0, 'delong': 0}
    reps = 200
    for rep in range(reps):
        y, a, b = _population(rng, 400)
        res = paired_bootstrap(y, a, b, ['roc_auc', 'brier'], n_boot=500, seed=rep)
        hits['boot_auc'] += res['roc_auc'].ci_low <= true_auc <= res['roc_auc'].ci_high
        hits['boot_brier'] += res['brier'].ci_low <= true_brier <= res['brier'].ci_high
        d = delong(y, a, b)
        hits['delong'] += d.ci_low <= true_auc <= d.ci_high
    coverage = {k: v / reps for k, v in hits.items()}
    print('coverage', coverage)
    for k, c in coverage.items(): assert 0.90 <= c <= 0.99, (k, c)


def test_tests_hold_their_level_under_the_null():
    "Two exchangeable models: DeLong, McNemar and bootstrap p-values fall below 0.05 about 5% of the time."
    rng = np.random.default_rng(11)
    reps, p_delong, p_mcnemar, p_boot = 400, [], [], []
    for rep in range(reps):
        y, a, b = _population(rng, 300, 1.0, 1.0)
        p_delong.append(delong(y, a, b).p_value)
        p_mcnemar.append(mcnemar((a >= .5) == y, (b >= .5) == y).p_value)
        if rep < 200: p_boot.append(paired_bootstrap(y, a, b, 'brier', n_boot=300, seed=rep).p_value)
    p_delong, p_mcnemar, p_boot = map(np.array, (p_delong, p_mcnemar, p_boot))
    rates = {'delong': (p_delong < .05).mean(), 'mcnemar': (p_mcnemar < .05).mean(), 'boot': (p_boot < .05).mean()}
    print('false-positive rates', rates)
    for k, r in rates.items(): assert r <= 0.08, (k, r)
    assert rates['delong'] >= 0.01  # not degenerate either
    # roughly uniform: each quarter of [0, 1] holds a fair share of DeLong p-values
    quarters = np.histogram(p_delong, bins=4, range=(0, 1))[0] / reps
    assert (quarters > 0.15).all() and (quarters < 0.35).all(), quarters


def test_identical_models_are_never_significantly_different():
    y, a, _ = _population(np.random.default_rng(3), 1000)
    df = pd.DataFrame({'s': a, 'g': np.random.default_rng(4).choice(list('xyz'), 1000), 'y': y})
    score = lambda d: d['s'].to_numpy()
    res = compare(score, score, df, 'y', slices=['g'], n_boot=300, measure_ops=False)
    assert res.decision == 'promote'
    assert all(r.p_value == 1.0 and r.diff == 0 for r in res.metrics)
    assert all(s.diff == 0 for s in res.slices if s.evaluated)
    strict = compare(score, score, df, 'y', gates=[Gate('roc_auc', min_improvement=0.0)], n_boot=300, measure_ops=False)
    assert strict.decision == 'reject'


def test_bootstrap_is_fast_and_bounded_on_100k_rows():
    "All bootstrap metrics on 100k rows with 1,000 replicates in a few seconds, in chunks of bounded memory."
    y, a, b = _population(np.random.default_rng(5), 100_000)
    t0 = time.perf_counter()
    res = paired_bootstrap(y, a, b, ['log_loss', 'brier', 'f1', 'accuracy'], n_boot=1000, max_cells=2_000_000)
    took = time.perf_counter() - t0
    print(f'bootstrap of 4 metrics, 100k rows x 1000: {took:.2f} s')
    assert took < 20
    assert all(r.n_valid == 1000 and r.ci_low < r.ci_high for r in res.values())


def test_prior_baseline_pickles_from_the_module():
    pb = PriorBaseline().fit(np.zeros((4, 1)), [0, 0, 0, 1])
    back = pickle.loads(pickle.dumps(pb))
    assert type(back).__module__ == 'mlprod.compare' and back.predict_proba(np.zeros((2, 1)))[0, 1] == 0.25


def test_shuffled_label_challenger_is_rejected_on_flights(flights):
    "On real data, a LightGBM trained on shuffled labels is rejected against one trained on the real labels."
    lgb = pytest.importorskip('lightgbm')
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(flights))
    train, test = flights.iloc[rows[:40_000]], flights.iloc[rows[40_000:60_000]]
    feats = ['hour', 'distance', 'sched_dep_time']
    fit = lambda labels: lgb.LGBMClassifier(n_estimators=100, learning_rate=0.1, num_leaves=31, n_jobs=1,
                                            verbose=-1).fit(train[feats], labels)
    real = fit(train.delayed)
    shuffled = fit(rng.permutation(train.delayed.to_numpy()))

    bad = compare(real, shuffled, test, 'delayed', slices=['origin'], n_boot=500,
                  champion_name='real labels', challenger_name='shuffled labels')
    print(bad.summary())
    assert bad.decision == 'reject'
    head = bad.row()
    assert head.champion > 0.6 and abs(head.challenger - 0.5) < 0.03 and head.ci_high < -0.005 and head.p_value < 1e-6
    assert any(r.startswith('gate:roc_auc:non_inferiority') for r in bad.reasons)
    assert {s.value for s in bad.slices if s.evaluated} == {'EWR', 'JFK', 'LGA'}
    assert bad.challenger_ops.latency_p50_ms > 0 and bad.challenger_ops.size_bytes > 1000
    assert 0 < bad.agreement['same_class_share'] <= 1

    good = compare(shuffled, real, test, 'delayed', slices=['origin'], n_boot=500, measure_ops=False)
    assert good.decision == 'promote', good.reasons
    first = compare(None, real, test, 'delayed', n_boot=200, measure_ops=False,
                    gates=[MinSamples(1000), Gate('roc_auc', min_improvement=0.05), SliceGate()])
    assert first.champion_name == 'prior baseline' and first.decision == 'promote', first.reasons
