"""Benchmark: alarm quality of mlprod's monitor (calibrated thresholds, importance-weighted drift, performance decides)
against Evidently's `DataDriftPreset` defaults, side by side, on the flights demo data (issue #14).

The version: LightGBM (the project's recipe and the flights config) trained on Jan 1 - Feb 14, 2013; its holdout is
Feb 15 - 28, split at random into two halves: half A calibrates (importance, thresholds, the estimate's calibration),
half B is the in-distribution data false alarms and injected shifts are measured on (never training rows, never the
rows that calibrated). Evidently's verdicts come from `mlprod.drift.detect_drift`, which reproduces
`DataDriftPreset`'s defaults exactly (tests/test_drift.py checks it against Evidently) and is fast enough for
hundreds of windows.

- False alarms: >= 200 windows of 200, 1,000 and 10,000 rows drawn from half B (with replacement: B holds ~6,200
  rows): share whose data-set verdict (`drift:share`) is FAIL (goal <= 1%) and WARNING or worse (goal <= 5%); the
  label-free verdict of the window (drift:share, drift:prediction and the estimate) beside it, and the label-free verdict
  with the halves swapped (B calibrates, A is measured). The printed false-alarm figure is the worst FAIL share over
  sizes, both verdicts and both splits.
- Power: shifts injected into half B that cost the model >= 0.02 ROC AUC (each shift's magnitude is the first of a
  fixed ladder that costs that much; the cost is measured on all of B with its labels): an important numeric
  feature moved, a category-mix change, a missing-value spike, a unit change; 200 windows of 1,000 rows each; share
  with a FAIL (goal >= 95%). Shifts in unimportant features costing < 0.005 AUC: FAIL share (goal <= 5%).
- The 2013 replay, label-free signals only (drift and the estimate, as the monitor runs without labels): months
  March - December, harmed when the month's AUC is >= 0.03 below the holdout's; precision and recall of FAIL.

- The label-free verdict is drift:share, drift:prediction and the CBPE estimate, their thresholds calibrated jointly on
  chunks of half A (one false-alarm budget per rate: `mlprod.drift.joint_thresholds`); the estimate's drop is measured
  against its value on half A with the map `window_calibration` fits there. The replay prints every label-free signal
  per month, the domain classifier's AUC (drift:multivariate, WARNING only) among them.
- The domain classifier's false-alarm rate: 200 windows of 200 and of 1,000 rows of half B, its threshold from
  reference splits (no holdout) and from windows of half A (a holdout given); 10,000-row windows are left out (~0.5 s
  per window on 2 cores, and B holds 6,244 rows).
- Calibration chunks: bootstrap rows (default) against contiguous time blocks of half A
  (`thresholds.calibration_chunks = 'time'`), judged on random and on contiguous windows of half B, power and replay.

Run with `make bench` or `pytest tests/benchmarks/bench_alarms.py -s -o python_files='bench_*.py'` (6-11 minutes on 2 busy cores: the domain classifier's 400 windows take half).
Prints the figures; asserts only what must hold whatever the goals (reproducible thresholds, sane figures)."""
import dataclasses, json, time

import numpy as np, pandas as pd

SIZES, N_WINDOWS, POWER_SIZE = (200, 1_000, 10_000), 200, 1_000
DOMAIN_SIZES, N_DOMAIN = (200, 1_000), 200
HARM_DROP, COSTLY, CHEAP = 0.03, 0.02, 0.005


def _version(flights):
    "The frozen version (an in-memory LoadedModel), its training rows and its holdout halves A and B."
    from mlprod.config import parse_config, DEFAULT_TOML
    from mlprod.recipes import train_lightgbm
    from mlprod.registry import LoadedModel
    from mlprod.data import Schema
    from mlprod.core import utcnow
    mc = parse_config(DEFAULT_TOML, env={}).model('flights')
    t = flights['time_hour']
    train = flights[t < pd.Timestamp('2013-02-15', tz='UTC')].reset_index(drop=True)
    hold = flights[(t >= pd.Timestamp('2013-02-15', tz='UTC')) & (t < pd.Timestamp('2013-03-01', tz='UTC'))].reset_index(drop=True)
    feats = list(mc.features)
    model = LoadedModel('flights', '1', None, train_lightgbm(train, mc), Schema.infer(train[feats], feats), feats, list(mc.categorical),
                        'binary', {'mlprod.target': mc.target, 'mlprod.classes': json.dumps([0, 1]), 'mlprod.positive_class': '1'},
                        'bench-run', '', utcnow(), _ref={'df': train})
    idx = np.random.default_rng(0).permutation(len(hold))
    return mc, model, train, hold, hold.iloc[idx[:len(hold) // 2]].reset_index(drop=True), hold.iloc[idx[len(hold) // 2:]].reset_index(drop=True)


def _scored(model, rows):
    from mlprod.profiles import PREDICTION
    return rows.assign(**{PREDICTION: model.predict_scores(rows)})


def _verdicts(model, prof, th, cal, baseline, window, feats):
    "(mlprod's label-free verdict, its drift:share status, Evidently's verdict, Evidently: any column drifted) of one window."
    from mlprod import monitor as M, profiles as P
    from mlprod.drift import detect_drift
    from mlprod.core import Status
    drift, pdrift = M.window_drift(prof, window, th)
    checks = M.drift_checks(drift, th, pdrift)
    checks += [M.estimate_check(window[P.PREDICTION].to_numpy(float), cal, th, baseline, 'holdout', n_sim=100, drift_calibration=prof.calibration)]
    checks, driver, _ = M.decide_verdict(checks)
    ev = detect_drift(prof, window, columns=feats)
    return Status.worst(c.status for c in checks if not c.name.startswith('drift:') or c.name in ('drift:share', 'drift:prediction')), \
        next(c for c in checks if c.name == 'drift:share').status, ev.dataset_drift, ev.n_drifted > 0


def _windows(frame, n, k, seed):
    rng = np.random.default_rng(seed)
    for _ in range(k): yield frame.iloc[rng.integers(0, len(frame), n)]


def _auc(model, rows):
    from sklearn.metrics import roc_auc_score
    return roc_auc_score(rows[model.target], model.predict_scores(rows))


def _shifts(model, prof, ref, B):
    "Named injected shifts: (name, function of a frame and a magnitude, magnitudes in increasing order, important?)."
    imp = prof.importance
    share = {c: max(v, 0) / sum(max(x, 0) for x in imp.values()) for c, v in imp.items()}
    num = [c for c in model.features if c not in model.categorical]
    cats = [c for c in model.features if c in model.categorical]
    top_num = max(num, key=lambda c: share[c]); top_cat = max(cats, key=lambda c: share[c])
    low = sorted((c for c in num if share[c] < 0.02), key=lambda c: share[c])
    sd = {c: float(ref[c].std()) for c in num}
    mode = ref[top_cat].mode().iloc[0]
    rng = np.random.default_rng(5)
    def mask(df, p): return rng.random(len(df)) < p
    out = [(f'numeric shift {top_num}', lambda d, k: d.assign(**{top_num: d[top_num] + k * sd[top_num]}), (0.5, 1, 2, 3, 5), True),
           (f'category mix {top_cat}', lambda d, p: d.assign(**{top_cat: d[top_cat].where(~mask(d, p), mode)}), (0.2, 0.4, 0.6, 0.8), True),
           (f'missing spike {top_num}', lambda d, p: d.assign(**{top_num: d[top_num].where(~mask(d, p))}), (0.2, 0.4, 0.6, 0.8, 1.0), True),
           (f'unit change {top_num}', lambda d, f: d.assign(**{top_num: d[top_num] * f}), (1.609, 2.54, 10.0, 0.1), True)]
    for c in low[:3]:
        out.append((f'unimportant: shift {c} by 2 sd', lambda d, k, c=c: d.assign(**{c: d[c] + k * sd[c]}), (2.0,), False))
        out.append((f'unimportant: unit change {c}', lambda d, f, c=c: d.assign(**{c: d[c] * f}), (1.609,), False))
    return out


def _rate(xs): return float(np.mean(xs)) if len(xs) else float('nan')


def test_alarm_quality(flights):
    from mlprod import monitor as M, profiles as P
    from mlprod.config import Thresholds
    from mlprod.core import Status
    from mlprod.drift import detect_drift
    t0 = time.perf_counter()
    mc, model, train, hold, A, B = _version(flights)
    th = dataclasses.replace(mc.thresholds, min_rows=200)
    feats = list(model.features)
    t = time.perf_counter()
    prof = P.build_reference_profile(model, train, A, th)
    build_s = time.perf_counter() - t
    again = P.calibrate_profile(prof, model, A, train, th)
    assert again.calibration == prof.calibration, 'calibrated thresholds must be reproducible with the seed'
    cal = M.window_calibration(model, prof, A)
    baseline = _auc(model, hold)
    Bs = _scored(model, B)
    print(f"\nversion: trained on {len(train):,} rows (Jan 1 - Feb 14), holdout {len(hold):,} rows (AUC {baseline:.3f}): "
          f"A {len(A):,} calibrates, B {len(B):,} is measured; profile with importance and thresholds built in {build_s:.1f} s")
    print(f"importance ({prof.meta['importance_source']}): " + ', '.join(f"{c} {v:.3f}" for c, v in sorted(prof.importance.items(), key=lambda x: -x[1])))
    print(f"thresholds: sizes {prof.calibration.sizes}, data-set score FAIL/WARNING " +
          ', '.join(f"n={n}: {q[0]:.3f}/{q[1]:.3f}" for n, q in zip(prof.calibration.sizes, prof.calibration.score)))

    # false alarms
    print(f"\nFalse alarms on in-distribution windows (half B, {N_WINDOWS} windows per size)")
    print("(data-set verdict = drift:share; label-free = the window's verdict without labels: drift:share, drift:prediction, estimate)")
    print(f"{'rows':>7} | {'data-set FAIL':>13} {'WARN+':>6} | {'label-free FAIL':>15} {'WARN+':>6} | {'Evidently drift':>15} {'any column':>10}")
    fa, fa_ev, timing = {}, {}, dict(calibrated=0.0, fixed=0.0)
    for n in SIZES:
        v = [_verdicts(model, prof, th, cal, baseline, w, feats) for w in _windows(Bs, n, N_WINDOWS, n)]
        fail, warn = _rate([x[0] == Status.FAIL for x in v]), _rate([x[0] in (Status.FAIL, Status.WARNING) for x in v])
        dfail, dwarn = _rate([x[1] == Status.FAIL for x in v]), _rate([x[1] in (Status.FAIL, Status.WARNING) for x in v])
        ev, ev_any = _rate([x[2] for x in v]), _rate([x[3] for x in v])
        fa[n], fa_ev[n] = (dfail, dwarn, fail, warn), ev
        print(f"{n:>7} | {dfail:>13.1%} {dwarn:>6.1%} | {fail:>15.1%} {warn:>6.1%} | {ev:>15.1%} {ev_any:>10.1%}")
    # the same with the halves swapped: a rate per window holds on average over holdouts, not given one split
    prof_b = P.build_reference_profile(model, train, B, th); cal_b = M.window_calibration(model, prof_b, B); As = _scored(model, A)
    swapped = {n: [_verdicts(model, prof_b, th, cal_b, baseline, w, feats)[0] for w in _windows(As, n, N_WINDOWS, n)] for n in (200, 1_000)}
    print("halves swapped (B calibrates, A is measured), label-free FAIL/WARNING+: " + ', '.join(
        f"{n}: {_rate([x == Status.FAIL for x in v]):.1%}/{_rate([x != Status.SUCCESS for x in v]):.1%}" for n, v in swapped.items()))
    for w in _windows(Bs, 10_000, 20, 99):
        t = time.perf_counter(); M.window_drift(prof, w, th); timing['calibrated'] += time.perf_counter() - t
        t = time.perf_counter(); M.window_drift(prof, w, dataclasses.replace(th, drift_mode='fixed')); timing['fixed'] += time.perf_counter() - t
    print(f"drift of a 10,000-row window: calibrated {timing['calibrated'] / 20 * 1000:.0f} ms, fixed (Evidently's tests) "
          f"{timing['fixed'] / 20 * 1000:.0f} ms: ratio {timing['calibrated'] / timing['fixed']:.2f}")

    # power
    print(f"\nInjected shifts on half B ({N_WINDOWS} windows of {POWER_SIZE:,} rows each); AUC cost on all of B (base {_auc(model, B):.3f})")
    print(f"{'shift':<44} {'magnitude':>9} {'AUC cost':>8} | {'mlprod FAIL':>11} {'drift FAIL':>10} | {'Evidently':>9}")
    base_b = _auc(model, B)
    power, power_ev, quiet, quiet_ev = [], [], [], []
    for name, fn, ladder, important in _shifts(model, prof, train, B):
        for mag in ladder:
            shifted = fn(B, mag); cost = base_b - _auc(model, shifted)
            if not important or cost >= COSTLY: break
        counted = cost >= COSTLY if important else cost < CHEAP
        Ss = _scored(model, shifted)
        v = [_verdicts(model, prof, th, cal, baseline, w, feats) for w in _windows(Ss, POWER_SIZE, N_WINDOWS, 7)]
        det, ddet, ev = _rate([x[0] == Status.FAIL for x in v]), _rate([x[1] == Status.FAIL for x in v]), _rate([x[2] for x in v])
        if counted: (power if important else quiet).extend(x[0] == Status.FAIL for x in v); (power_ev if important else quiet_ev).extend(x[2] for x in v)
        print(f"{name:<44} {mag:>9g} {cost:>8.4f} | {det:>11.1%} {ddet:>10.1%} | {ev:>9.1%}" + ('' if counted else '  (not counted: cost outside its class)'))
    print(f"power (shifts costing >= {COSTLY} AUC): mlprod {_rate(power):.1%}, Evidently {_rate(power_ev):.1%}; "
          f"unimportant shifts (< {CHEAP} AUC) failed: mlprod {_rate(quiet):.1%} (goal <= 5%), Evidently {_rate(quiet_ev):.1%}")

    # the domain classifier (drift:multivariate, WARNING only): its threshold from reference splits (without a holdout) or holdout windows
    from mlprod.signals import domain_auc, domain_null
    cats, dth = [c for c in feats if c in model.categorical], {}
    print(f"\nDomain classifier on in-distribution windows (half B, {N_DOMAIN} windows per size; threshold at "
          f"{th.domain_false_alarm:.0%} from 4 reference splits, or from 4 windows of half A against the training rows)")
    print(f"{'rows':>7} | {'AUC median':>10} | {'threshold (splits)':>18} {'drifted':>7} | {'threshold (holdout)':>19} {'drifted':>7} | {'s/window':>8}")
    for n in DOMAIN_SIZES:
        nulls = [domain_null(train, n, feats, cats, th.domain_false_alarm, max_rows=th.domain_max_rows, holdout=h) for h in (None, A)]
        dth[n] = nulls[1].threshold
        t = time.perf_counter()
        aucs = np.array([domain_auc(train, w, feats, cats, th.domain_max_rows)[0] for w in _windows(B, n, N_DOMAIN, 100 + n)])
        per = (time.perf_counter() - t) / N_DOMAIN
        fa_dom = [_rate(aucs > nl.threshold) for nl in nulls]
        print(f"{n:>7} | {np.median(aucs):>10.3f} | {nulls[0].threshold:>18.3f} {fa_dom[0]:>7.1%} | {nulls[1].threshold:>19.3f} {fa_dom[1]:>7.1%} | {per:>8.2f}")

    # the 2013 replay
    print(f"\nReplay of 2013, label-free (drift + prediction + estimate); harmed = AUC >= {HARM_DROP} below the holdout's {baseline:.3f}")
    print("score: importance-weighted drift score (warns/fails at); pred: prediction drift in times its limit; domain: classifier AUC "
          "(its holdout-window threshold); estimate: CBPE and its drop below the estimate on half A (warns/fails beyond)")
    print(f"{'month':<5} {'rows':>6} {'AUC':>6} {'drop':>6} {'harm':>5} | {'score':>5} {'warn/fail':>9} | {'pred':>5} | {'domain':>6} {'(thr)':>6} | "
          f"{'estimate':>8} {'drop':>6} {'warn/fail':>11} | {'mlprod':>7} {'driver':<16} | {'Evidently':>9}")
    t = flights['time_hour']; rows, months = [], {}
    from sklearn.metrics import roc_auc_score
    null_month = domain_null(train, 27_000, feats, cats, th.domain_false_alarm, max_rows=th.domain_max_rows, holdout=A)
    for m in range(3, 13):
        lo, hi = pd.Timestamp(f'2013-{m:02d}-01', tz='UTC'), pd.Timestamp(f'2014-01-01' if m == 12 else f'2013-{m + 1:02d}-01', tz='UTC')
        month = months[m] = _scored(model, flights[(t >= lo) & (t < hi)].reset_index(drop=True))
        auc = roc_auc_score(month[model.target], month[P.PREDICTION])
        drift, pdrift = M.window_drift(prof, month, th)
        est = M.estimate_check(month[P.PREDICTION].to_numpy(float), cal, th, baseline, 'holdout', n_sim=50, drift_calibration=prof.calibration)
        checks, driver, _ = M.decide_verdict(M.drift_checks(drift, th, pdrift) + [est])
        verdict = Status.worst(c.status for c in checks if not c.name.startswith('drift:') or c.name in ('drift:share', 'drift:prediction'))
        dom = domain_auc(train, month, feats, cats, th.domain_max_rows)[0]
        ev = detect_drift(prof, month, columns=feats).dataset_drift
        harmed = baseline - auc >= HARM_DROP
        rows.append((harmed, verdict == Status.FAIL, ev))
        d = est.details
        print(f"{lo:%b}   {len(month):>6} {auc:>6.3f} {baseline - auc:>6.3f} {'yes' if harmed else 'no':>5} | {drift.score:>5.2f} "
              f"{drift.score_warning:>4.2f}/{drift.score_fail:<4.2f} | {pdrift.ratio:>5.2f} | {dom:>6.3f} {null_month.threshold:>6.3f} | "
              f"{est.observed:>8.3f} {d['reference_estimate'] - est.observed:>6.3f} {d['drop_warning']:>5.3f}/{d['drop_fail']:<5.3f} | "
              f"{verdict.value:>7} {driver:<16} | {'FAIL' if ev else 'ok':>9}")
    def pr(rows, k):
        tp = sum(h and a[k] for h, *a in rows); alarms = sum(a[k] for _, *a in rows); harmed = sum(h for h, *_ in rows)
        return (tp / alarms if alarms else float('nan')), (tp / harmed if harmed else float('nan'))

    # calibration chunks: bootstrap rows (the default) or contiguous time blocks of half A (thresholds.calibration_chunks = 'time')
    pb = P.calibrate_profile(prof, model, A, train, th, time_column='time_hour')
    Bt = Bs.sort_values('time_hour', kind='stable').reset_index(drop=True)
    def contiguous(frame, n, k, seed):
        for s in np.random.default_rng(seed).integers(0, len(frame) - n + 1, k): yield frame.iloc[s:s + n]
    def verdict_of(p, w): return _verdicts(model, p, th, cal, baseline, w, feats)[0]
    print(f"\nCalibration chunks: random rows (default) vs time blocks of half A; label-free verdict FAIL/WARNING+ on {N_WINDOWS} windows of half B "
          "drawn as random rows or as contiguous stretches of time (what a production window is)")
    print(f"{'chunks':<12} {'rows':>5} | {'random windows':>14} | {'contiguous windows':>18}")
    fa_blocks = {}
    for label, p in (('random rows', prof), ('time blocks', pb)):
        for n in (200, 1_000):
            r = [verdict_of(p, w) for w in _windows(Bs, n, N_WINDOWS, n)]; c = [verdict_of(p, w) for w in contiguous(Bt, n, N_WINDOWS, n)]
            fig = [_rate([x == Status.FAIL for x in v]) for v in (r, c)] + [_rate([x != Status.SUCCESS for x in v]) for v in (r, c)]
            fa_blocks[label, n] = fig
            print(f"{label:<12} {n:>5} | {fig[0]:>6.1%}/{fig[2]:<6.1%} | {fig[1]:>8.1%}/{fig[3]:<8.1%}")
    pw, qt = [], []
    for name, fn, ladder, important in _shifts(model, prof, train, B):
        for mag in ladder:
            shifted = fn(B, mag); cost = base_b - _auc(model, shifted)
            if not important or cost >= COSTLY: break
        if (cost >= COSTLY) if important else (cost < CHEAP):
            (pw if important else qt).extend(verdict_of(pb, w) == Status.FAIL for w in _windows(_scored(model, shifted), POWER_SIZE, N_WINDOWS, 7))
    rows_b = []
    for m, month in months.items():
        est = M.estimate_check(month[P.PREDICTION].to_numpy(float), cal, th, baseline, 'holdout', n_sim=50, drift_calibration=pb.calibration)
        drift, pdrift = M.window_drift(pb, month, th)
        checks, _, _ = M.decide_verdict(M.drift_checks(drift, th, pdrift) + [est])
        verdict = Status.worst(c.status for c in checks if not c.name.startswith('drift:') or c.name in ('drift:share', 'drift:prediction'))
        rows_b.append((rows[m - 3][0], verdict == Status.FAIL, False))
    (pbp, pbr) = pr(rows_b, 0)
    print(f"time blocks: power {_rate(pw):.1%} (random rows {_rate(power):.1%}), unimportant shifts failed {_rate(qt):.1%}; replay FAIL months "
          f"{[m for (h, f, _), m in zip(rows_b, months) if f]}, precision {pbp:.2f} recall {pbr:.2f}")

    (p, r), (pe, re_) = pr(rows, 0), pr(rows, 1)
    fa_fail = max([max(f, lf) for f, _, lf, _ in fa.values()] + [_rate([x == Status.FAIL for x in v]) for v in swapped.values()])
    print(f"\nfalse alarms per size, data-set FAIL/WARNING+ (label-free FAIL/WARNING+): " +
          ', '.join(f"{n}: {f:.1%}/{w:.1%} ({lf:.1%}/{lw:.1%})" for n, (f, w, lf, lw) in fa.items()) +
          f"; whole run {time.perf_counter() - t0:.0f} s")
    print(f"evidently alarm quality: false alarms {max(fa_ev.values()):.1%} (goal <= 1%), power {_rate(power_ev):.1%} (goal >= 95%), "
          f"replay precision {pe:.2f} recall {re_:.2f}")
    print(f"alarm quality: false alarms {fa_fail:.1%} (goal <= 1%), power {_rate(power):.1%} (goal >= 95%), "
          f"replay precision {p:.2f} recall {r:.2f}")
    assert all(0 <= f <= w <= 1 and 0 <= lf <= lw <= 1 for f, w, lf, lw in fa.values()) and len(rows) == 10
