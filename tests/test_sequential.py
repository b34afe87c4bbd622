"""mlprod.sequential: the confidence sequences hold at every look, the scalar API agrees with the vectorized pieces the
A/A simulation uses, and the A/A simulation (fewer canaries than `make bench`) keeps wrong decisions at or below 5%
while a fixed-level test peeked at the same looks does not."""
import json, math
import numpy as np, pytest

from mlprod.sequential import (SequentialResult, SequentialError, beta_binomial_cs, bernstein_cs, normal_mixture_radius,
                               classify, proportion_difference, mean_difference, decide, simulate_canaries)

ALPHA = 0.05


def noise(share: float, n: int, k: float = 2.0) -> float:
    "k binomial standard errors of a share measured on n simulations: the allowance for simulation noise."
    return k * math.sqrt(share * (1 - share) / n)


def test_beta_binomial_sequence_covers_the_rate_at_every_look():
    rng = np.random.default_rng(11)
    sims, rows, p = 400, 5000, 0.01
    x = np.cumsum(rng.random((sims, rows)) < p, axis=1)[:, 24::25]          # a look every 25 rows
    n = np.arange(25, rows + 1, 25)
    lo, up = beta_binomial_cs(x, np.broadcast_to(n, x.shape), alpha=ALPHA)
    missed = ((lo > p) | (up < p)).any(axis=1).mean()
    assert missed <= ALPHA + noise(ALPHA, sims), missed
    # and it is not trivially wide: after 5,000 rows it excludes twice the rate
    assert (up[:, -1] < 0.02).mean() > 0.9 and np.median(up[:, -1] - lo[:, -1]) < 0.013


def test_beta_binomial_bounds_are_the_ends_of_the_set_the_martingale_keeps():
    "Bisection assumes {p : M_n(p) < 1/alpha} is an interval around x/n: check it on a fine grid for random counts."
    from mlprod.sequential import _log_mixture
    rng, grid = np.random.default_rng(14), np.linspace(0, 1, 100_001)[1:-1]
    for _ in range(60):
        n = int(rng.integers(1, 30_000)); x = int(rng.binomial(n, rng.choice([0.001, 0.01, 0.1, 0.5])))
        keep = np.flatnonzero(_log_mixture(grid, x, n, (0.5, 0.5), 1000 / 8) < math.log(1 / 0.025))
        lo, up = beta_binomial_cs(x, n, alpha=0.025)
        assert (np.diff(keep) == 1).all(), (x, n)
        assert lo - 2e-5 <= grid[keep[0]] and grid[keep[-1]] <= up + 2e-5 and up - lo <= grid[keep[-1]] - grid[keep[0]] + 4e-5, (x, n)


def test_bernstein_sequence_covers_the_mean_after_every_row():
    rng = np.random.default_rng(12)
    sims, rows, mean = 300, 2000, 0.2
    missed = 0
    for _ in range(sims):
        lo, up = bernstein_cs(rng.beta(2, 8, rows), (0, 1), alpha=ALPHA)
        missed += bool(((lo > mean) | (up < mean)).any())
        assert lo[-1] > 0.17 and up[-1] < 0.23                              # and it is narrow after 2,000 rows
    assert missed / sims <= ALPHA + noise(ALPHA, sims), missed / sims


def test_scalar_api_agrees_with_the_vectorized_pieces():
    rng = np.random.default_rng(13)
    can = rng.random(20_000) < 0.1
    err = rng.random(20_000) < np.where(can, 0.02, 0.01)
    r = proportion_difference(int(err[can].sum()), int(can.sum()), int(err[~can].sum()), int((~can).sum()), alpha=0.1)
    (lc, uc), (lp, up) = beta_binomial_cs(err[can].sum(), can.sum(), alpha=0.05), beta_binomial_cs(err[~can].sum(), (~can).sum(), alpha=0.05)
    assert r.lower == pytest.approx(float(lc - up)) and r.upper == pytest.approx(float(uc - lp))
    assert r.method == 'beta-binomial' and r.alpha == 0.1 and r.decision == str(classify(r.lower, r.upper, r.n_canary, r.n_production))
    loss = rng.beta(2, 8, 20_000)
    m = mean_difference(loss[can], loss[~can], bounds=(0, 1), margin=0.02, metric='metric')
    (lc, uc), (lp, up) = bernstein_cs(loss[can], (0, 1), alpha=0.025), bernstein_cs(loss[~can], (0, 1), alpha=0.025)
    assert (m.lower, m.upper) == pytest.approx((lc[-1] - up[-1], uc[-1] - lp[-1]))
    assert m.decision == 'not_worse' and m.lower < 0 < m.upper <= 0.02
    lat = rng.normal(3.7, 0.5, 20_000)
    a = mean_difference(lat[can], lat[~can])
    v = lat[can].var(ddof=1) / can.sum() + lat[~can].var(ddof=1) / (~can).sum()
    assert a.upper - a.estimate == pytest.approx(float(normal_mixture_radius(v, can.sum(), tune_n=1000)))
    doc = json.loads(json.dumps(a.to_dict()))
    assert doc['metric'] == 'latency' and doc['decision'] in ('continue', 'worse', 'not_worse') and doc['n_canary'] == can.sum()


def test_decide_aborts_on_any_worse_and_promotes_only_on_all_not_worse():
    worse = proportion_difference(40, 400, 36, 3600)                        # 10% vs 1%
    fine = proportion_difference(0, 2000, 0, 18_000, margin=0.005)
    waiting = proportion_difference(0, 50, 0, 450, margin=0.005)
    assert (worse.decision, fine.decision, waiting.decision) == ('worse', 'not_worse', 'continue')
    assert decide([fine, worse])[0] == 'abort' and 'canary worse' in decide([fine, worse])[1]
    assert decide([fine, fine]) == ('promote', f"{fine.reason} {fine.reason}")
    action, why = decide([fine, waiting])
    assert action == 'continue' and 'waiting for 100 rows per arm' in why and why == waiting.reason
    with pytest.raises(SequentialError, match='results: got an empty list'): decide([])
    with pytest.raises(SequentialError, match='allowed: SequentialResult'): decide([fine, {'decision': 'worse'}])


def test_aa_simulation_wrong_decisions_at_most_5_percent_while_peeking_inflates():
    sims = 300
    aa = simulate_canaries(sims, horizon=10_000, look_every=50, seed=21)    # 200 looks, margin 0: any abort is wrong
    assert aa['n_looks'] == 200 and aa['sequential']['abort'] + aa['sequential']['promote'] + aa['sequential']['undecided'] == pytest.approx(1)
    assert aa['sequential']['abort'] <= 0.05 + noise(0.05, sims), aa['sequential']
    assert all(v <= 0.05 + noise(0.05, sims) for v in aa['sequential_differs'].values()), aa['sequential_differs']
    # the fixed-level rule on the same data at the same looks: far above 5%
    assert aa['fixed']['abort'] >= 0.2 and aa['fixed']['abort'] >= 3 * max(aa['sequential']['abort'], 0.02), aa['fixed']
    # the classic figure: a two-sided 5% Welch test looked at 5 times says "different" in ~14% of A/A tests
    assert 0.14 - 2 * noise(0.14, sims, 1) <= aa['fixed_5_looks_differs']['latency'] <= 0.14 + 2 * noise(0.14, sims, 1), aa['fixed_5_looks_differs']
    assert aa['fixed_differs']['latency'] > aa['fixed_5_looks_differs']['latency'] + 0.05     # more looks, more inflation


def test_aa_with_margins_promotes_and_never_aborts():
    sims = 200
    margins = {'error_rate': 0.005, 'latency': math.log(1.05), 'metric': 0.01}
    aa = simulate_canaries(sims, horizon=60_000, look_every=500, margins=margins, seed=22)
    s = aa['sequential']
    assert s['abort'] <= 0.05 + noise(0.05, sims), s                       # with margin > 0 a promote is right
    assert s['promote'] >= 0.05, s                                          # ... and happens (rare errors need many rows)
    assert s['abort'] + s['promote'] + s['undecided'] == pytest.approx(1)


def test_aa_share_changed_halfway_keeps_wrong_decisions_at_most_5_percent():
    sims = 200
    aa = simulate_canaries(sims, horizon=10_000, look_every=50, share=(0.05, 0.5), seed=24)
    assert aa['sequential']['abort'] <= 0.05 + noise(0.05, sims), aa['sequential']
    assert all(v <= 0.05 + noise(0.05, sims) for v in aa['sequential_differs'].values()), aa['sequential_differs']


@pytest.mark.parametrize('change, within, power', [(dict(error_ratio=3), 2000, 0.8), (dict(latency_ratio=1.3), 500, 0.95)])
def test_power_a_worse_canary_is_aborted(change, within, power):
    r = simulate_canaries(100, horizon=20_000, look_every=100, seed=23, **change)
    s = r['sequential']
    assert s['abort'] >= power and s['median_canary_rows_to_abort'] <= within, s
