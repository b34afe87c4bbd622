"""Benchmark (statistical): A/A and power simulation of the canary decisions (mlprod.sequential) against a fixed-level
test peeked at the same looks, on the same simulated rows.

Canaries get 10% of the rows (hash split); production fails 1% of rows, latency is lognormal (sigma 0.5, compared on
the log scale), a per-row loss in [0, 1] arrives with labels. Every canary is looked at every 100 rows (200 looks) and
stopped at its first abort or promote. Run with `make bench` (or `pytest tests/benchmarks/bench_canary_aa.py -s`);
MLPROD_BENCH_SIMS sets the number of A/A canaries (default 1000; the other setups use half). Prints the shares of
each decision for both methods and the closing line
`canary A/A: wrong decisions W% (goal <= 5%), fixed-level peeking F%, power P%`; asserts only the goal (W <= 5%)
and that the fixed-level test peeked at the same looks is wrong more often."""
import math, os, time

from mlprod.sequential import simulate_canaries

SIMS = int(os.environ.get('MLPROD_BENCH_SIMS', 1000))
MARGINS = {'error_rate': 0.005, 'latency': math.log(1.05), 'metric': 0.01}
SETUPS = [  # name, kind, keyword arguments of simulate_canaries
    ('A/A, margins 0', 'aa', dict(n_sims=SIMS, horizon=20_000, look_every=100)),
    ('A/A, margins 0.5pp / 5% / 0.01', 'aa', dict(n_sims=SIMS // 2, horizon=100_000, look_every=500, margins=MARGINS)),
    ('3x error rate', 'power', dict(n_sims=SIMS // 2, horizon=20_000, look_every=100, error_ratio=3)),
    ('+30% latency', 'power', dict(n_sims=SIMS // 2, horizon=20_000, look_every=100, latency_ratio=1.3)),
    ('+0.05 per-row loss', 'power', dict(n_sims=SIMS // 2, horizon=20_000, look_every=100, loss_shift=0.05)),
]


def pct(v): return '—' if v != v else f"{100 * v:.1f}%"


def test_canary_aa_benchmark():
    runs = {}
    print(f"\n\ncanary decisions: {SIMS:,} A/A canaries, 10% share, 1% errors, lognormal latency, per-row loss; "
          "first abort or promote over 200 looks")
    head = f"{'setup':34}{'rows':>8}{'seq abort':>10}{'promote':>9}{'undecided':>10}{'rows@abort':>11}{'fixed abort':>12}{'promote':>9}{'s':>7}"
    print(head)
    for name, kind, kw in SETUPS:
        t = time.perf_counter(); r = runs[name] = simulate_canaries(seed=len(runs), **kw); s, f = r['sequential'], r['fixed']
        print(f"{name:34}{r['horizon']:>8,}{pct(s['abort']):>10}{pct(s['promote']):>9}{pct(s['undecided']):>10}"
              f"{s['median_canary_rows_to_abort']:>11.0f}{pct(f['abort']):>12}{pct(f['promote']):>9}{time.perf_counter() - t:>7.1f}")
    aa = runs['A/A, margins 0']
    print("\nA/A, margins 0: share of canaries where a method declares a difference (its interval excludes 0) at any look")
    print(f"{'metric':14}{'sequential (200 looks)':>24}{'fixed 5% (200 looks)':>22}{'fixed 5% (5 looks)':>20}")
    for m in aa['sequential_differs']:
        print(f"{m:14}{pct(aa['sequential_differs'][m]):>24}{pct(aa['fixed_differs'][m]):>22}{pct(aa['fixed_5_looks_differs'][m]):>20}")
    wrong = max(r['sequential']['abort'] for (n, kind, _), r in zip(SETUPS, runs.values()) if kind == 'aa')
    fixed = aa['fixed']['abort']
    power = {n: r['sequential']['abort'] for (n, kind, _), r in zip(SETUPS, runs.values()) if kind == 'power'}
    rows = {n: r['sequential']['median_canary_rows_to_abort'] for (n, kind, _), r in zip(SETUPS, runs.values()) if kind == 'power'}
    print(f"fixed-level peeking / sequential wrong aborts (A/A, margins 0): {fixed:.3f} / {aa['sequential']['abort']:.3f}"
          f" = {fixed / max(aa['sequential']['abort'], 1 / aa['n_sims']):.0f}x (sequential floored at 1 canary)")
    print('power: ' + '; '.join(f"{n} aborted in {pct(p)} within {runs[n]['horizon']:,} rows ({runs[n]['share']:.0%} to the "
                                f"canary; median {rows[n]:.0f} canary rows)" for n, p in power.items()))
    print(f"canary A/A: wrong decisions {100 * wrong:.1f}% (goal <= 5%), fixed-level peeking {100 * fixed:.1f}%, "
          f"power {100 * min(power.values()):.1f}%")
    assert wrong <= 0.05 and fixed > wrong
