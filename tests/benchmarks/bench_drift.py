"""Benchmark: mlprod.drift vs Evidently 0.7 DataDriftPreset (defaults) on 1,000,000 rows x 30 columns.

Each side runs in its own subprocess so that its peak memory (ru_maxrss) is its own. Run with
`make bench` (or `pytest tests/benchmarks/bench_drift.py -s`); set MLPROD_BENCH_ROWS for a quick run.
Prints times, peak memory and ratios; asserts only that both sides reach the same verdicts."""
import json, os, resource, subprocess, sys, time
from pathlib import Path

import numpy as np, pandas as pd

ROWS = int(os.environ.get('MLPROD_BENCH_ROWS', 1_000_000))
N_NUM, N_CAT = 20, 10
SHIFTED_NUM = {'num_0': 0.5, 'num_1': 0.2, 'num_2': 0.05, 'num_3': 0.15}  # mean shift in std units
SHIFTED_CAT = {'cat_0': 0.3, 'cat_1': 0.05}  # share of rows moved to another category


def make_frames(n: int, seed: int = 0):
    "Reference and current frames: 20 numeric (some with NaN, a few distinct values) and 10 categorical columns."
    rng = np.random.default_rng(seed)
    def frame(shifted: bool, rng):
        cols = {}
        for i in range(N_NUM):
            shift = SHIFTED_NUM.get(f'num_{i}', 0) if shifted else 0
            if i % 5 == 4: a = rng.integers(0, 5, n).astype(float)           # few distinct values -> Jensen-Shannon
            elif i % 5 == 3: a = rng.lognormal(0, 1, n) * (1 + shift)
            else: a = rng.normal(shift, 1, n)
            if i % 4 == 1: a[rng.random(n) < 0.02] = np.nan
            cols[f'num_{i}'] = a
        for j in range(N_CAT):
            k = 3 + 4 * j  # 3 .. 39 categories
            cats = np.array([f'c{j}_{v}' for v in range(k)], dtype=object)
            p = np.linspace(2, 1, k); p /= p.sum()
            a = cats[rng.choice(k, n, p=p)]
            move = SHIFTED_CAT.get(f'cat_{j}', 0) if shifted else 0
            if move: a[rng.random(n) < move] = cats[0]
            cols[f'cat_{j}'] = a
        return pd.DataFrame(cols)
    return frame(False, rng), frame(True, rng)


def _rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(side: str, n: int, out: str):
    "Run one side in this process and write its figures and verdicts as JSON."
    ref, cur = make_frames(n)
    data_mb = _rss_mb()
    res = dict(side=side, rows=n, data_peak_mb=data_mb)
    if side == 'mlprod':
        from mlprod.drift import ReferenceProfile, detect_drift
        t = time.perf_counter(); profile = ReferenceProfile.from_frame(ref); res['build_s'] = time.perf_counter() - t
        del ref
        t = time.perf_counter(); r = detect_drift(profile, cur); res['detect_s'] = time.perf_counter() - t
        res['verdicts'] = {c.column: [c.stattest, c.statistic, c.drifted] for c in r.columns}
        res['dataset_drift'], res['n_drifted'] = r.dataset_drift, r.n_drifted
    else:
        import warnings
        warnings.simplefilter('ignore')
        from evidently import Report, Dataset, DataDefinition
        from evidently.presets import DataDriftPreset
        names = {'K-S p_value': 'ks', 'Wasserstein distance (normed)': 'wasserstein', 'Jensen-Shannon distance': 'jensenshannon',
                 'chi-square p_value': 'chisquare', 'Z-test p_value': 'z'}
        t = time.perf_counter()
        dd = DataDefinition(numerical_columns=[c for c in cur if c.startswith('num')], categorical_columns=[c for c in cur if c.startswith('cat')])
        snap = Report([DataDriftPreset()], include_tests=True).run(Dataset.from_pandas(cur, data_definition=dd),
                                                                   Dataset.from_pandas(ref, data_definition=dd))
        d = snap.dict()
        res['detect_s'] = time.perf_counter() - t
        v = {m['config']['column']: [names[m['config']['method']], m['value'], None] for m in d['metrics'] if m['config']['type'].endswith(':ValueDrift')}
        for tr in d['tests']:
            if tr['name'].startswith('Value Drift for column '):
                v[tr['name'][len('Value Drift for column '):]][2] = getattr(tr['status'], 'value', tr['status']) == 'FAIL'
            elif tr['name'].startswith('Share of Drifted Columns'):
                res['dataset_drift'] = getattr(tr['status'], 'value', tr['status']) == 'FAIL'
        res['verdicts'] = v
        res['n_drifted'] = sum(x[2] for x in v.values())
    res['peak_mb'] = _rss_mb()
    Path(out).write_text(json.dumps(res))


def _run_side(side, tmp_path):
    out = tmp_path / f'{side}.json'
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, side, str(ROWS), str(out)], check=True, env=env)
    r = json.loads(out.read_text())
    r['wall_s'] = time.perf_counter() - t
    return r


def test_drift_benchmark(tmp_path):
    ours = _run_side('mlprod', tmp_path)
    theirs = _run_side('evidently', tmp_path)
    print(f"\n\ndrift benchmark: {ROWS:,} rows x {N_NUM + N_CAT} columns ({N_NUM} numeric, {N_CAT} categorical), "
          f"reference and current, each side in its own process")
    print(f"{'':28}{'mlprod':>12}{'evidently':>12}{'ratio':>10}")
    print(f"{'profile build (once), s':28}{ours['build_s']:>12.2f}{'—':>12}")
    print(f"{'drift detection, s':28}{ours['detect_s']:>12.2f}{theirs['detect_s']:>12.2f}{theirs['detect_s'] / ours['detect_s']:>9.1f}x")
    both = ours['build_s'] + ours['detect_s']
    print(f"{'build + detection, s':28}{both:>12.2f}{theirs['detect_s']:>12.2f}{theirs['detect_s'] / both:>9.1f}x")
    print(f"{'peak RSS after data, MB':28}{ours['data_peak_mb']:>12.0f}{theirs['data_peak_mb']:>12.0f}")
    print(f"{'peak RSS, MB':28}{ours['peak_mb']:>12.0f}{theirs['peak_mb']:>12.0f}{theirs['peak_mb'] / ours['peak_mb']:>9.1f}x")
    worst = max(abs(a[1] - theirs['verdicts'][k][1]) / max(abs(a[1]), abs(theirs['verdicts'][k][1]), 1e-300)
                for k, a in ours['verdicts'].items())
    print(f"drifted columns: mlprod {ours['n_drifted']}, evidently {theirs['n_drifted']}; "
          f"data-set drift {ours['dataset_drift']} / {theirs['dataset_drift']}; largest relative statistic difference {worst:.1e}")
    print('columns:', ', '.join(f"{k}={v[0]}:{v[1]:.3g}{'*' if v[2] else ''}" for k, v in ours['verdicts'].items()))
    assert {k: (v[0], v[2]) for k, v in ours['verdicts'].items()} == {k: (v[0], v[2]) for k, v in theirs['verdicts'].items()}
    assert ours['dataset_drift'] == theirs['dataset_drift']
    assert worst < 1e-6


if __name__ == '__main__':
    worker(sys.argv[1], int(sys.argv[2]), sys.argv[3])
