"Statistical properties of mlprod.compare (simulations) and a real-data champion/challenger check."
import dataclasses, pickle, time
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


def _multiclass_population(rng, n, k=3, signal_a=1.2, signal_b=1.0):
    "Labels of k classes and two correlated softmax probability matrices; the champion (a) carries more signal than b."
    y = rng.integers(0, k, n)
    onehot = np.eye(k)[y]
    shared = rng.normal(size=(n, k))
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    pa = softmax(signal_a * onehot + 0.7 * shared + 0.7 * rng.normal(size=(n, k)))
    pb = softmax(signal_b * onehot + 0.7 * shared + 0.7 * rng.normal(size=(n, k)))
    return y, pa, pb


def test_multiclass_intervals_cover_and_tests_hold_their_level():
    """Multiclass: bootstrap intervals of the macro AUC and log-loss differences cover the population difference near 95%;
    for exchangeable models McNemar (accuracy) and the bootstrap (macro AUC) reject about 5% of the time at most."""
    from mlprod.compare import get_metric
    auc, ll = get_metric('roc_auc_ovr', 'multiclass'), get_metric('log_loss', 'multiclass')
    y, a, b = _multiclass_population(np.random.default_rng(1), 600_000)
    true_auc, true_ll = auc(y, b) - auc(y, a), ll(y, b) - ll(y, a)
    assert true_auc < -0.01 and true_ll > 0
    rng, reps, hits = np.random.default_rng(2), 150, {'roc_auc_ovr': 0, 'log_loss': 0}
    for rep in range(reps):
        y, a, b = _multiclass_population(rng, 400)
        res = paired_bootstrap(y, a, b, ['roc_auc_ovr', 'log_loss'], n_boot=400, seed=rep, task='multiclass')
        hits['roc_auc_ovr'] += res['roc_auc_ovr'].ci_low <= true_auc <= res['roc_auc_ovr'].ci_high
        hits['log_loss'] += res['log_loss'].ci_low <= true_ll <= res['log_loss'].ci_high
    coverage = {k: v / reps for k, v in hits.items()}
    print('multiclass coverage', coverage)
    for k, c in coverage.items(): assert 0.89 <= c <= 0.99, (k, c)
    p_mcnemar, p_boot = [], []
    for rep in range(300):
        y, a, b = _multiclass_population(rng, 300, signal_a=1.0, signal_b=1.0)
        p_mcnemar.append(mcnemar(a.argmax(1) == y, b.argmax(1) == y).p_value)
        if rep < 150: p_boot.append(paired_bootstrap(y, a, b, 'roc_auc_ovr', n_boot=300, seed=rep, task='multiclass').p_value)
    rates = {'mcnemar': np.mean(np.array(p_mcnemar) < .05), 'boot': np.mean(np.array(p_boot) < .05)}
    print('multiclass false-positive rates', rates)
    for k, r in rates.items(): assert r <= 0.08, (k, r)
    assert rates['mcnemar'] >= 0.005 or rates['boot'] >= 0.005  # not degenerate either


def test_string_labels_compare_like_their_01_encoding():
    "A binary comparison on 'yes'/'no' labels gives exactly the figures of the same comparison on 1/0 labels."
    y, a, b = _population(np.random.default_rng(8), 1500)
    df = pd.DataFrame({'a': a, 'b': b, 'g': np.random.default_rng(9).choice(list('xy'), 1500)})
    num = compare(lambda d: d['a'].to_numpy(), lambda d: d['b'].to_numpy(), df.assign(y=y), 'y', slices=['g'], n_boot=300, measure_ops=False)
    txt = compare(lambda d: d['a'].to_numpy(), lambda d: d['b'].to_numpy(), df.assign(y=np.where(y == 1, 'yes', 'no')), 'y',
                  positive_class='yes', slices=['g'], n_boot=300, measure_ops=False)
    assert [dataclasses.astuple(r) for r in txt.metrics] == [dataclasses.astuple(r) for r in num.metrics]
    assert [dataclasses.astuple(s) for s in txt.slices] == [dataclasses.astuple(s) for s in num.slices]
    assert txt.decision == num.decision and txt.positive_class == 'yes'
