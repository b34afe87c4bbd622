"""Benchmark: alarm quality of mlprod's monitor (calibrated thresholds, importance-weighted drift, performance decides)
against Evidently's `DataDriftPreset` defaults, side by side, on the flights demo data (issue #14).

The version: LightGBM (the project's recipe and the flights config) trained on Jan 1 - Feb 14, 2013; its holdout is
Feb 15 - 28, split at random into two halves: half A calibrates (importance, thresholds, the estimate's calibration),
half B is the in-distribution data false alarms and injected shifts are measured on (never training rows, never the
rows that calibrated). Evidently's verdicts come from `mlprod.drift.detect_drift`, which reproduces
`DataDriftPreset`'s defaults exactly (tests/test_drift.py checks it against Evidently) and is fast enough for
hundreds of windows.

- Windows are drawn two ways: random rows of the measured half (with replacement), and contiguous stretches of it in
  time order (200 rows ~ 9 hours, 1,000 rows ~ 2 days): what a user's hourly or daily window is.
- Thresholds: the library's default chunks (`thresholds.calibration_chunks = 'auto'`: time blocks of `time_hour`, the
  version's time column) against bootstrap rows ('random'), both measured. Time blocks (calibration method 2): each
  important column alone joins the data-set budget, the tail is bounded where too few independent blocks certify a
  rate (`mlprod.drift.tail_bounds`), and the training snapshot's blocks join the input columns' draws (`history`).
- False alarms: the verdicts of >= 200 windows of 200, 1,000 and 10,000 random rows of half B (data-set = drift:share;
  label-free = drift:share, drift:prediction, drift:relations and the estimate; whole = every check `evaluate_window` builds without
  labels but the domain classifier, settled by `decide_verdict`; `evaluate_window` itself is checked to give the same
  statuses on two windows). Then over 5 random splits of the holdout in both directions, for both chunkings, random and
  contiguous windows of 200 and 1,000 rows (200 per cell): each split direction's FAIL / WARNING-or-worse share of the
  whole verdict, the mean and the range. The importance of split 0's half A weighs the score in every split (only the
  thresholds are measured again). The printed false-alarm figure is the worst mean FAIL share over sizes and window
  kinds, default chunks.
- Power: shifts injected into half B that cost the model >= 0.02 ROC AUC (each shift's magnitude is the first of a
  fixed ladder that costs that much; the cost is measured on all of B with its labels): an important numeric
  feature moved, a category-mix change, a missing-value spike, a unit change; 200 windows of 1,000 rows each, random
  and contiguous; share with a FAIL (goal >= 95%), both chunkings and Evidently; and, default chunks, share with an alarm (the
  whole label-free verdict WARNING or worse, `drift:relations` among its checks). Shifts in unimportant features
  costing < 0.005 AUC: FAIL share (goal <= 5%). The printed power is the default chunks' on contiguous windows.
- The domain classifier's false-alarm rate (drift:multivariate, WARNING only): 100 random and 100 contiguous windows of
  200 and of 1,000 rows of half B, its threshold from reference splits (no holdout) and from windows of half A (a
  holdout given), and the whole verdict with it among the checks; 10,000-row windows are left out (~0.3 s per window).
- The 2013 replay, label-free signals only (drift and the estimate, as the monitor runs without labels): months
  March - December, harmed when the month's AUC is >= 0.03 below the holdout's; precision and recall of FAIL, both
  chunkings, and of alarms (WARNING or worse of the data-set checks, the estimate and `drift:relations`). The replay prints every label-free signal per month, the domain classifier's AUC among them.

Run with `make bench` or `pytest tests/benchmarks/bench_alarms.py -s -o python_files='bench_*.py'` (7-12 minutes on 2 busy cores).
Prints the figures; asserts only what must hold whatever the goals (reproducible thresholds, sane figures)."""
import dataclasses, json, time

import numpy as np, pandas as pd

SIZES, N_WINDOWS, POWER_SIZE = (200, 1_000, 10_000), 200, 1_000
DOMAIN_SIZES, N_DOMAIN, N_SPLITS = (200, 1_000), 100, 5
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
                        'binary', {'mlprod.target': mc.target, 'mlprod.classes': json.dumps([0, 1]), 'mlprod.positive_class': '1',
                         'mlprod.time_column': mc.time_column},
                        'bench-run', '', utcnow(), _ref={'df': train})
    idx = np.random.default_rng(0).permutation(len(hold))
    return mc, model, train, hold, hold.iloc[idx[:len(hold) // 2]].reset_index(drop=True), hold.iloc[idx[len(hold) // 2:]].reset_index(drop=True)


def _scored(model, rows):
    from mlprod.profiles import PREDICTION
    return rows.assign(**{PREDICTION: model.predict_scores(rows)})


def _checks(model, prof, th, cal, baseline, window, extra=()):
    "The label-free checks of a window as `mlprod.monitor.evaluate_window` builds them (data quality, every drift check, the estimate), the domain classifier aside unless given in `extra`."
    from mlprod import monitor as M, profiles as P
    checks = M.data_quality_checks(window, model.schema, th) + M.window_drift_checks(prof, window, th)[0] + list(extra)
    checks += [M.estimate_check(window[P.PREDICTION].to_numpy(float), cal, th, baseline, 'holdout', n_sim=20, drift_calibration=prof.calibration)]
    return M.decide_verdict(checks)[0]


CORE = ('drift:share', 'drift:prediction', 'drift:relations', 'estimated:roc_auc') # the data-set-level label-free verdict (power: its FAIL)


def _status(checks, names=None):
    from mlprod.core import Status
    return Status.worst(c.status for c in checks if names is None or c.name in names)


def _verdicts(model, prof, th, cal, baseline, window, feats, evidently=True):
    "(mlprod's label-free verdict: score, prediction, estimate; its drift:share status; Evidently's verdict; Evidently: any column drifted; the whole label-free verdict) of one window."
    from mlprod.drift import detect_drift
    checks = _checks(model, prof, th, cal, baseline, window)
    ev = detect_drift(prof, window, columns=feats) if evidently else None
    return _status(checks, CORE), _status(checks, ('drift:share',)), ev is not None and ev.dataset_drift, ev is not None and ev.n_drifted > 0, _status(checks)


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


def _contiguous(frame, n, k, seed):
    "`k` windows of `n` consecutive rows of `frame` (sorted by time): what a production window of a few hours or days is."
    for s in np.random.default_rng(seed).integers(0, len(frame) - n + 1, k): yield frame.iloc[s:s + n]


def _halves(hold, seed):
    "Half A (calibrates) and half B (measured) of the holdout, split at random with `seed`."
    idx = np.random.default_rng(seed).permutation(len(hold))
    return hold.iloc[idx[:len(hold) // 2]].reset_index(drop=True), hold.iloc[idx[len(hold) // 2:]].reset_index(drop=True)


def _by_time(frame): return frame.sort_values('time_hour', kind='stable').reset_index(drop=True)


def _fw(statuses):
    "(FAIL share, WARNING-or-worse share) of a list of statuses."
    from mlprod.core import Status
    return _rate([x == Status.FAIL for x in statuses]), _rate([x in (Status.FAIL, Status.WARNING) for x in statuses])


def _calibrated(model, prof, rows, train, th, chunks):
    "`prof` (its importance) calibrated on `rows` with `chunks` ('random' or 'time'), and the estimate's calibration map on them."
    from mlprod import monitor as M, profiles as P
    t = dataclasses.replace(th, calibration_chunks=chunks)
    p = P.calibrate_profile(prof, model, rows, train, t, time_column='time_hour' if chunks == 'time' else None)
    return p, M.window_calibration(model, p, rows)


def _pick(fn, ladder, important, B, base_b, model):
    "The first magnitude of `ladder` whose shift of B costs >= COSTLY AUC (important shifts), and its cost."
    for mag in ladder:
        cost = base_b - _auc(model, fn(B, mag))
        if not important or cost >= COSTLY: break
    return mag, cost


def test_alarm_quality(flights):
    from mlprod import monitor as M, profiles as P
    from mlprod.core import Status
    from mlprod.drift import detect_drift
    t0 = time.perf_counter()
    mc, model, train, hold, A, B = _version(flights)
    th = dataclasses.replace(mc.thresholds, min_rows=200)
    feats = list(model.features)
    t = time.perf_counter()
    prof = P.build_reference_profile(model, train, A, th)   # the library's default chunks (see `thresholds.calibration_chunks`)
    build_s = time.perf_counter() - t
    again = P.calibrate_profile(prof, model, A, train, th)
    assert again.calibration == prof.calibration, 'calibrated thresholds must be reproducible with the seed'
    default = 'time' if prof.calibration.chunking.startswith('time') else 'random'
    cal = M.window_calibration(model, prof, A)
    modes = {default: (prof, cal)}
    other = 'random' if default == 'time' else 'time'
    modes[other] = _calibrated(model, prof, A, train, th, other)
    WORDS = {'random': 'random rows', 'time': 'time blocks'}
    baseline = _auc(model, hold)
    Bs = _scored(model, B); Bt = _by_time(Bs)
    print(f"\nversion: trained on {len(train):,} rows (Jan 1 - Feb 14), holdout {len(hold):,} rows (AUC {baseline:.3f}): "
          f"A {len(A):,} calibrates, B {len(B):,} is measured; profile with importance and thresholds built in {build_s:.1f} s; "
          f"default chunks ({th.calibration_chunks!r}): {prof.calibration.chunking}")
    print(f"importance ({prof.meta['importance_source']}): " + ', '.join(f"{c} {v:.3f}" for c, v in sorted(prof.importance.items(), key=lambda x: -x[1])))
    print(f"thresholds: sizes {prof.calibration.sizes}, data-set score FAIL/WARNING " +
          ', '.join(f"n={n}: {q[0]:.3f}/{q[1]:.3f}" for n, q in zip(prof.calibration.sizes, prof.calibration.score)))

    # false alarms, split A -> B, the default chunks
    print(f"\nFalse alarms on in-distribution windows (half B, {N_WINDOWS} random-row windows per size; thresholds: {prof.calibration.chunking} of half A)")
    print("(data-set = drift:share; label-free = drift:share, drift:prediction, drift:relations, estimate; whole = every check the monitor builds without labels "
          "but the domain classifier: drift:<column>, data quality included)")
    print(f"{'rows':>7} | {'data-set FAIL':>13} {'WARN+':>6} | {'label-free FAIL':>15} {'WARN+':>6} | {'whole FAIL':>10} {'WARN+':>6} | "
          f"{'Evidently drift':>15} {'any column':>10}")
    fa, fa_ev, timing = {}, {}, dict(calibrated=0.0, fixed=0.0)
    for n in SIZES:
        v = [_verdicts(model, prof, th, cal, baseline, w, feats) for w in _windows(Bs, n, N_WINDOWS, n)]
        (fail, warn), (dfail, dwarn), (wfail, wwarn) = _fw([x[0] for x in v]), _fw([x[1] for x in v]), _fw([x[4] for x in v])
        ev, ev_any = _rate([x[2] for x in v]), _rate([x[3] for x in v])
        fa[n], fa_ev[n] = (dfail, dwarn, fail, warn), ev
        print(f"{n:>7} | {dfail:>13.1%} {dwarn:>6.1%} | {fail:>15.1%} {warn:>6.1%} | {wfail:>10.1%} {wwarn:>6.1%} | {ev:>15.1%} {ev_any:>10.1%}")
    for w in _windows(Bs, 10_000, 20, 99):
        t = time.perf_counter(); M.window_drift(prof, w, th); timing['calibrated'] += time.perf_counter() - t
        t = time.perf_counter(); M.window_drift(prof, w, dataclasses.replace(th, drift_mode='fixed')); timing['fixed'] += time.perf_counter() - t
    print(f"drift of a 10,000-row window: calibrated {timing['calibrated'] / 20 * 1000:.0f} ms, fixed (Evidently's tests) "
          f"{timing['fixed'] / 20 * 1000:.0f} ms: ratio {timing['calibrated'] / timing['fixed']:.2f}")
    # the evaluate_window of a few windows gives the same statuses as the checks the bench builds (the domain classifier aside)
    from mlprod.monitor import Window, evaluate_window
    from mlprod.core import to_utc
    for w in list(_contiguous(Bt, 1_000, 2, 5)):
        r = evaluate_window(Window('flights', '1', None, to_utc('2013-02-15'), to_utc('2013-03-01'), 'data-frame', w.drop(columns=[model.target])),
                            model, prof, th, reference=train, holdout=A, sample_rows=100)
        mine = {c.name: c.status for c in _checks(model, prof, th, cal, baseline, w.drop(columns=[model.target]))}
        theirs = {c.name: c.status for c in r.checks.checks if c.name in mine}
        assert theirs == mine, (theirs, mine)

    # false alarms over several splits of the holdout, both directions, both chunkings; random-row and contiguous windows
    print(f"\nFalse alarms over {N_SPLITS} random splits of the holdout, both directions ({N_WINDOWS} windows per size each; whole label-free "
          "verdict, FAIL / WARNING or worse, per split then mean [range])")
    per = {}   # (chunks, window kind, n) -> [(fail, warn+, core fail, core warn+) per split direction]
    for seed in range(N_SPLITS):
        a, b = _halves(hold, seed)
        for direction, (crows, mrows) in (('A->B', (a, b)), ('B->A', (b, a))):
            ms = _scored(model, mrows); mt = _by_time(ms)
            for chunks in (default, other):
                p, c = modes[chunks] if (seed, direction) == (0, 'A->B') else _calibrated(model, prof, crows, train, th, chunks)
                for kind, draw in (('random', lambda n: _windows(ms, n, N_WINDOWS, n)), ('contiguous', lambda n: _contiguous(mt, n, N_WINDOWS, n))):
                    for n in (200, 1_000):
                        cks = [_checks(model, p, th, c, baseline, w) for w in draw(n)]
                        per.setdefault((chunks, kind, n), []).append(_fw([_status(x) for x in cks]) + _fw([_status(x, CORE) for x in cks]))
    print(f"{'chunks':<12} {'windows':<10} {'rows':>5} | {'FAIL mean [range]':>19} | {'WARN+ mean [range]':>19} | {'label-free WARN+':>16} | WARN+ per split (A->B, B->A; seeds 0..{N_SPLITS - 1})")
    summary = {}
    for (chunks, kind, n), rs in per.items():
        f, w, cw = (np.array([r[i] for r in rs]) for i in (0, 1, 3))
        summary[chunks, kind, n] = (f.mean(), w.mean(), f.min(), f.max(), w.min(), w.max())
        print(f"{WORDS[chunks]:<12} {kind:<10} {n:>5} | {f.mean():>6.1%} [{f.min():.1%}-{f.max():.1%}] | {w.mean():>6.1%} [{w.min():.1%}-{w.max():.1%}] | "
              f"{cw.mean():>16.1%} | " + ' '.join(f"{x:.1%}" for x in w))

    # power: shifts injected into random-row windows and into contiguous stretches of half B, both chunkings
    base_b = _auc(model, B)
    print(f"\nInjected shifts on half B ({N_WINDOWS} windows of {POWER_SIZE:,} rows each, random rows and contiguous stretches of time); "
          f"AUC cost on all of B (base {base_b:.3f}); share of windows FAIL")
    print(f"{'shift':<40} {'magnitude':>9} {'AUC cost':>8} | {'random windows':^27} | {'contiguous windows':^27}")
    print(f"{'':<40} {'':>9} {'':>8} | {'random':>7} {'time':>7} {'Evidently':>9} | {'random':>7} {'time':>7} {'Evidently':>9}")
    power, quiet, alarm = {}, {}, {}
    for name, fn, ladder, important in _shifts(model, prof, train, B):
        mag, cost = _pick(fn, ladder, important, B, base_b, model)
        counted = cost >= COSTLY if important else cost < CHEAP
        cells = []
        for kind, frame in (('random', _scored(model, fn(B, mag))), ('contiguous', _scored(model, fn(Bt, mag)))):
            ws = list(_windows(frame, POWER_SIZE, N_WINDOWS, 7) if kind == 'random' else _contiguous(frame, POWER_SIZE, N_WINDOWS, 7))
            for chunks in ('random', 'time'):
                p, c = modes[chunks]
                cks = [_checks(model, p, th, c, baseline, w) for w in ws]
                hits = [_status(x, CORE) == Status.FAIL for x in cks]
                if counted: (power if important else quiet).setdefault((kind, chunks), []).extend(hits)
                if counted and chunks == default:  # an alarm: the whole label-free verdict WARNING or worse (drift:relations among its checks)
                    alarm.setdefault((kind, important), []).extend(_status(x) in (Status.FAIL, Status.WARNING) for x in cks)
                cells.append(_rate(hits))
            hits = [detect_drift(prof, w, columns=feats).dataset_drift for w in ws]
            if counted: (power if important else quiet).setdefault((kind, 'evidently'), []).extend(hits)
            cells.append(_rate(hits))
        print(f"{name:<40} {mag:>9g} {cost:>8.4f} | {cells[0]:>7.1%} {cells[1]:>7.1%} {cells[2]:>9.1%} | {cells[3]:>7.1%} {cells[4]:>7.1%} {cells[5]:>9.1%}"
              + ('' if counted else '  (not counted: cost outside its class)'))
    print(f"power (shifts costing >= {COSTLY} AUC) / unimportant shifts (< {CHEAP} AUC) failed (goal <= 5%), by chunks and windows:")
    for kind in ('random', 'contiguous'):
        print(f"  {kind} windows: " + '; '.join(f"{WORDS.get(k, 'Evidently')} {_rate(power[kind, k]):.1%} / {_rate(quiet[kind, k]):.1%}"
                                            for k in ('random', 'time', 'evidently')))
    print(f"alarms (the whole label-free verdict WARNING or worse, {WORDS[default]}): shifts costing >= {COSTLY} AUC " +
          ', '.join(f"{k} windows {_rate(alarm[k, True]):.1%}" for k in ('contiguous', 'random')) + f"; unimportant shifts (< {CHEAP} AUC) " +
          ', '.join(f"{k} windows {_rate(alarm[k, False]):.1%}" for k in ('contiguous', 'random')))
    print("trade-off (contiguous windows, the default's figures first): " + '; '.join(
        f"{WORDS[k]}: false alarms FAIL {summary[k, 'contiguous', 1_000][0]:.1%} / WARN+ {summary[k, 'contiguous', 1_000][1]:.1%} at 1,000 rows "
        f"({summary[k, 'contiguous', 200][0]:.1%} / {summary[k, 'contiguous', 200][1]:.1%} at 200), power {_rate(power['contiguous', k]):.1%}" for k in (default, other)))

    # the domain classifier (drift:multivariate, WARNING only): its threshold from reference splits (without a holdout) or holdout windows
    from mlprod.signals import domain_auc, domain_null, domain_check, DomainDrift
    cats, dom = [c for c in feats if c in model.categorical], {}
    print(f"\nDomain classifier on in-distribution windows (half B, {N_DOMAIN} windows per size and kind; threshold at "
          f"{th.domain_false_alarm:.0%} from 4 reference splits, or from 4 windows of half A against the training rows); "
          "monitor = the whole label-free verdict with drift:multivariate (holdout threshold) among its checks, WARNING or worse")
    print(f"{'rows':>7} {'windows':<10} | {'AUC median':>10} | {'threshold (splits)':>18} {'drifted':>7} | {'threshold (holdout)':>19} {'drifted':>7} | "
          f"{'monitor WARN+':>13} | {'s/window':>8}")
    for n in DOMAIN_SIZES:
        nulls = [domain_null(train, n, feats, cats, th.domain_false_alarm, max_rows=th.domain_max_rows, holdout=h) for h in (None, A)]
        for kind, ws in (('random', list(_windows(Bs, n, N_DOMAIN, 100 + n))), ('contiguous', list(_contiguous(Bt, n, N_DOMAIN, 100 + n)))):
            t = time.perf_counter()
            fits = [domain_auc(train, w, feats, cats, th.domain_max_rows) for w in ws]
            sec, aucs = (time.perf_counter() - t) / N_DOMAIN, np.array([f[0] for f in fits])
            fa_dom = [_rate(aucs > nl.threshold) for nl in nulls]
            nl = nulls[1]
            whole = [_status(_checks(model, prof, th, cal, baseline, w, [domain_check(DomainDrift(a, max(a - 1.96 * se, 0), min(a + 1.96 * se, 1), nl.threshold,
                     nl.mean, th.domain_false_alarm, nr, nc, 0.0, nl.source), th)])) != Status.SUCCESS for w, (a, se, nr, nc) in zip(ws, fits)]
            dom[n, kind] = _rate(whole)
            print(f"{n:>7} {kind:<10} | {np.median(aucs):>10.3f} | {nulls[0].threshold:>18.3f} {fa_dom[0]:>7.1%} | {nulls[1].threshold:>19.3f} {fa_dom[1]:>7.1%} | "
                  f"{dom[n, kind]:>13.1%} | {sec:>8.2f}")

    # the 2013 replay, both chunkings
    print(f"\nReplay of 2013, label-free (drift + prediction + estimate; thresholds: {prof.calibration.chunking}); harmed = AUC >= {HARM_DROP} below the holdout's {baseline:.3f}")
    print("score: importance-weighted drift score (warns/fails at); pred: prediction drift in times its limit; domain: classifier AUC "
          "(its holdout-window threshold); estimate: CBPE and its drop below the estimate on half A (warns/fails beyond); rel: "
          "drift:relations' largest mean residual and where it warns")
    print(f"{'month':<5} {'rows':>6} {'AUC':>6} {'drop':>6} {'harm':>5} | {'score':>5} {'warn/fail':>9} | {'pred':>5} | {'domain':>6} {'(thr)':>6} | "
          f"{'estimate':>8} {'drop':>6} {'warn/fail':>11} | {'mlprod':>7} {'driver':<16} | {'rel':>5} {'warns':>5} | {'Evidently':>9}")
    t = flights['time_hour']; rows, months = [], {}
    from sklearn.metrics import roc_auc_score
    null_month = domain_null(train, 27_000, feats, cats, th.domain_false_alarm, max_rows=th.domain_max_rows, holdout=A)
    for m in range(3, 13):
        lo, hi = pd.Timestamp(f'2013-{m:02d}-01', tz='UTC'), pd.Timestamp(f'2014-01-01' if m == 12 else f'2013-{m + 1:02d}-01', tz='UTC')
        month = months[m] = _scored(model, flights[(t >= lo) & (t < hi)].reset_index(drop=True))
        auc = roc_auc_score(month[model.target], month[P.PREDICTION])
        drift, pdrift = M.window_drift(prof, month, th)
        est = M.estimate_check(month[P.PREDICTION].to_numpy(float), cal, th, baseline, 'holdout', n_sim=50, drift_calibration=prof.calibration)
        rel = M.relations_check(prof, month)
        checks, driver, _ = M.decide_verdict(M.drift_checks(drift, th, pdrift) + [est] + ([rel] if rel else []))
        verdict, warned = _status(checks, CORE), _status(checks, CORE) in (Status.FAIL, Status.WARNING)
        dm = domain_auc(train, month, feats, cats, th.domain_max_rows)[0]
        ev = detect_drift(prof, month, columns=feats).dataset_drift
        harmed = baseline - auc >= HARM_DROP
        rows.append((harmed, verdict == Status.FAIL, ev, warned))
        d = est.details
        print(f"{lo:%b}   {len(month):>6} {auc:>6.3f} {baseline - auc:>6.3f} {'yes' if harmed else 'no':>5} | {drift.score:>5.2f} "
              f"{drift.score_warning:>4.2f}/{drift.score_fail:<4.2f} | {pdrift.ratio:>5.2f} | {dm:>6.3f} {null_month.threshold:>6.3f} | "
              f"{est.observed:>8.3f} {d['reference_estimate'] - est.observed:>6.3f} {d['drop_warning']:>5.3f}/{d['drop_fail']:<5.3f} | "
              f"{_status(checks).value:>7} {driver:<16} | {rel.observed if rel else float('nan'):>5.2f} {rel.details['threshold'] if rel else float('nan'):>5.2f} | {'FAIL' if ev else 'ok':>9}")
    def pr(rows, k):
        tp = sum(h and a[k] for h, *a in rows); alarms = sum(a[k] for _, *a in rows); harmed = sum(h for h, *_ in rows)
        return (tp / alarms if alarms else float('nan')), (tp / harmed if harmed else float('nan'))
    po, co = modes[other]
    rows_o = []
    for m, month in months.items():
        est = M.estimate_check(month[P.PREDICTION].to_numpy(float), co, th, baseline, 'holdout', n_sim=50, drift_calibration=po.calibration)
        drift, pdrift = M.window_drift(po, month, th)
        rows_o.append((rows[m - 3][0], _status(M.decide_verdict(M.drift_checks(drift, th, pdrift) + [est])[0], CORE) == Status.FAIL, False, False))
    (pop, por) = pr(rows_o, 0)
    print(f"{WORDS[other]} instead: replay FAIL months {[m for (h, f, *_), m in zip(rows_o, months) if f]}, precision {pop:.2f} recall {por:.2f}")

    (p, r), (pe, re_), (pw, rw) = pr(rows, 0), pr(rows, 1), pr(rows, 2)
    print(f"replay as alarms (drift:share, drift:prediction, drift:relations or the estimate WARNING or worse): months {[m for (h, f, e, w), m in zip(rows, months) if w]}, "
          f"precision {pw:.2f} recall {rw:.2f}")
    worst = max(summary[k][0] for k in summary if k[0] == default)
    worst_w = max((summary[k][1], k) for k in summary if k[0] == default)
    print(f"\nfalse alarms per size (split A->B, random-row windows), data-set FAIL/WARNING+ (label-free FAIL/WARNING+): " +
          ', '.join(f"{n}: {f:.1%}/{w:.1%} ({lf:.1%}/{lw:.1%})" for n, (f, w, lf, lw) in fa.items()) +
          f"; whole run {time.perf_counter() - t0:.0f} s")
    print(f"whole label-free verdict, default chunks ({WORDS[default]}), mean over {2 * N_SPLITS} split directions, worst over 200/1,000 rows and "
          f"random/contiguous windows: FAIL {worst:.1%} (goal <= 1%), WARNING or worse {worst_w[0]:.1%} (goal <= 5%; {worst_w[1][1]} windows of "
          f"{worst_w[1][2]:,} rows, range {summary[worst_w[1]][4]:.1%}-{summary[worst_w[1]][5]:.1%}); with drift:multivariate "
          + ', '.join(f"{n} {k}: {v:.1%}" for (n, k), v in dom.items()))
    print(f"power as an alarm (WARNING or worse): {_rate(alarm['contiguous', True]):.1%} of contiguous windows; as a FAIL on the last line")
    print(f"evidently alarm quality: false alarms {max(fa_ev.values()):.1%} (goal <= 1%), power {_rate(power['contiguous', 'evidently']):.1%} (goal >= 95%), "
          f"replay precision {pe:.2f} recall {re_:.2f}")
    print(f"alarm quality: false alarms {worst:.1%} (goal <= 1%), power {_rate(power['contiguous', default]):.1%} (goal >= 95%), "
          f"replay precision {p:.2f} recall {r:.2f}")
    assert all(0 <= f <= w <= 1 and 0 <= lf <= lw <= 1 for f, w, lf, lw in fa.values()) and len(rows) == 10
    assert all(0 <= v[2] <= v[0] <= v[3] <= 1 and v[4] <= v[1] <= v[5] for v in summary.values())
