"""Labels of any type and the multiclass task through the registry loop: register, `mlprod compare`, `mlprod promote`, the pytest plugin.

Real data sets that ship with scikit-learn: breast cancer with the labels 'malignant'/'benign' (binary, the positive
class set in the config to 'malignant', which is *not* what the 0/1 target would say) and wine cultivars (multiclass).
The data source and the recipe live in a module of the project folder, as a user's would."""
import json, os, textwrap
import numpy as np, pandas as pd, pytest
from sklearn import metrics as skm
from conftest import run_cli, offline_env, project_folder

SRC = '''
import numpy as np, pandas as pd
from sklearn import datasets
from sklearn.linear_model import LogisticRegression

def _timed(df):
    "Rows shuffled once, then one per hour from 2024-01-01 (UTC)."
    df = df.sample(frac=1, random_state=0).reset_index(drop=True)
    return df.assign(seen=pd.date_range('2024-01-01', periods=len(df), freq='h', tz='UTC'))

def cancer():
    d = datasets.load_breast_cancer(as_frame=True)
    return _timed(d.data[['mean radius', 'mean texture', 'mean smoothness']].assign(
        diagnosis=np.where(d.target == 1, 'benign', 'malignant')))

def wine():
    d = datasets.load_wine(as_frame=True)
    return _timed(d.data[['alcohol', 'flavanoids', 'color_intensity', 'ash']].assign(
        cultivar=np.array(['barolo', 'grignolino', 'barbera'])[d.target]))

def _window(df, start, end):
    t = df['seen']
    utc = lambda v: pd.Timestamp(v).tz_localize('UTC') if pd.Timestamp(v).tzinfo is None else pd.Timestamp(v).tz_convert('UTC')
    return df[(t >= utc(start)) & (t < utc(end))].reset_index(drop=True)

def load_cancer(start, end): return _window(cancer(), start, end)
def load_wine(start, end): return _window(wine(), start, end)

def train(df, cfg):
    return LogisticRegression(max_iter=3000).fit(df[list(cfg.features)], df[cfg.target])
'''

TOML = '''
[project]
name = "labels"

[models.cancer]
target = "diagnosis"
time_column = "seen"
positive_class = "malignant"
data_source = "labels_src:load_cancer"
recipe = "labels_src:train"
features = ["mean radius", "mean texture", "mean smoothness"]
[models.cancer.thresholds]
min_rows = 50

[models.wine]
task = "multiclass"
target = "cultivar"
time_column = "seen"
data_source = "labels_src:load_wine"
recipe = "labels_src:train"
features = ["alcohol", "flavanoids", "color_intensity"]
[models.wine.thresholds]
min_rows = 50
'''

TRAIN = ('2024-01-01', '2024-01-13')          # 288 hourly rows
EVAL = ('2024-01-14', '2024-02-01')          # the rest: 257 cancer rows, none of wine's after 2024-01-08
WINE_TRAIN, WINE_EVAL = ('2024-01-01', '2024-01-04'), ('2024-01-04', '2024-01-08')  # 72 and 96 of wine's 178 rows


@pytest.fixture(scope='module')
def labels_project(tmp_path_factory):
    "A project with three versions of `cancer` (weak, strong, shuffled labels) and two of `wine` (weak, strong)."
    import sys, dataclasses
    from mlprod.config import get_config, reset_config
    from mlprod import registry
    root, mp = project_folder(tmp_path_factory, 'labels', {'labels_src.py': SRC, 'mlprod.toml': TOML})
    mp.setenv('MLPROD_ACTOR', 'tester')
    reset_config(); cfg = get_config()
    import labels_src
    versions = {}
    for name, load, (start, end), weak in (('cancer', labels_src.load_cancer, TRAIN, ['mean smoothness']),
                                           ('wine', labels_src.load_wine, WINE_TRAIN, ['ash'])):
        mc = cfg.model(name); df = load(start, end)
        fits = [(labels_src.train(df, dataclasses.replace(mc, features=tuple(weak))), weak, df),
                (labels_src.train(df, mc), list(mc.features), df)]
        if name == 'cancer':
            shuffled = df.assign(diagnosis=np.random.default_rng(0).permutation(df['diagnosis'].to_numpy()))
            fits.append((labels_src.train(shuffled, mc), list(mc.features), shuffled))
        versions[name] = [registry.register(m, name, d, features=f, categorical=[], window=(start, end), cfg=cfg).version
                          for m, f, d in fits]
    assert versions == {'cancer': ['1', '2', '3'], 'wine': ['1', '2']}
    env = offline_env(PYTHONPATH=os.pathsep.join([str(root), os.environ.get('PYTHONPATH', '')]))
    yield type('P', (), dict(cfg=cfg, root=root, env=env, src=labels_src))
    registry.clear_cache(); reset_config(); mp.undo()


def _compare(p, name, *argv):
    "`mlprod compare NAME ARGV --json` as a subprocess: (exit code, parsed JSON or None, stderr)."
    r = run_cli('compare', name, *argv, '--n-boot', 300, '--no-ops', '--json', cwd=p.root, env=p.env)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip().startswith('{') else None), r.stderr


def _promote(p, name, version, decision):
    r = run_cli('promote', name, version, '--to', 'production', '--reason', 'compared', '--decision', decision, cwd=p.root, env=p.env)
    assert r.returncode == 0, r.stderr
    return r


def _row(d, metric):
    return next(m for m in d['comparison']['metrics'] if m['metric'] == metric)


def test_string_labels_binary_through_compare_and_promote(labels_project):
    "'malignant'/'benign' labels: the stored positive class scores and maps the labels; the CLI compares, promotes and rejects."
    p = labels_project
    from mlprod import registry
    v2 = registry.load('cancer', '2', p.cfg)
    assert (v2.classes, v2.positive_class) == (['benign', 'malignant'], 'malignant')

    code, d, err = _compare(p, 'cancer', '--challenger', 1, '--window', *EVAL)
    assert code == 0 and d['decision'] == 'promote', err
    assert d['champion_version'] is None and _row(d, 'roc_auc')['champion'] == 0.5
    assert d['comparison']['positive_class'] == 'malignant'
    _promote(p, 'cancer', 1, d['id'])

    code, d, err = _compare(p, 'cancer', '--challenger', 2, '--window', *EVAL)
    assert code == 0 and d['decision'] == 'promote', (err, d and d['comparison']['reasons'])
    rows = p.src.load_cancer(*EVAL)
    y = (rows['diagnosis'] == 'malignant').astype(int)
    auc2 = skm.roc_auc_score(y, v2.model.predict_proba(rows[v2.features])[:, list(v2.model.classes_).index('malignant')])
    head = _row(d, 'roc_auc')
    assert d['comparison']['n_rows'] == len(rows) == 257
    assert head['challenger'] == pytest.approx(auc2, abs=1e-12) and head['test'] == 'DeLong'
    assert 0.9 < head['challenger'] and head['diff'] > 0.1 and head['ci_low'] > 0 and head['p_value'] < 1e-6
    assert _row(d, 'log_loss')['challenger'] == pytest.approx(
        skm.log_loss(rows['diagnosis'], v2.model.predict_proba(rows[v2.features]), labels=['benign', 'malignant']), abs=1e-9)
    _promote(p, 'cancer', 2, d['id'])
    assert registry.resolve_version('cancer', 'production', p.cfg) == '2'

    code, d, err = _compare(p, 'cancer', '--challenger', 3, '--window', *EVAL)  # trained on shuffled labels
    assert code == 1 and d['decision'] == 'reject' and _row(d, 'roc_auc')['ci_high'] < 0, err
    r = run_cli('promote', 'cancer', 3, '--to', 'production', '--reason', 'anyway', '--decision', d['id'], cwd=p.root, env=p.env)
    assert r.returncode == 1 and 'reject' in r.stderr


def test_multiclass_through_compare_and_promote(labels_project):
    "Wine cultivars: macro one-vs-rest AUC headline with a bootstrap interval, McNemar on accuracy, promote by decision."
    p = labels_project
    from mlprod import registry
    code, d, err = _compare(p, 'wine', '--challenger', 1, '--window', *WINE_EVAL)
    assert code in (0, 1) and d is not None, err
    assert d['comparison']['metric'] == 'roc_auc_ovr' and _row(d, 'roc_auc_ovr')['champion'] == 0.5
    assert d['comparison']['classes'] == ['barbera', 'barolo', 'grignolino']
    if d['decision'] == 'promote': _promote(p, 'wine', 1, d['id'])
    else:  # a weak first version: put it in production with an explicit override of the baseline comparison
        registry.promote('wine', 1, reason='first version', force=True, cfg=p.cfg)

    code, d, err = _compare(p, 'wine', '--challenger', 2, '--window', *WINE_EVAL)
    assert code == 0 and d['decision'] == 'promote', (err, d and d['comparison']['reasons'])
    rows = p.src.load_wine(*WINE_EVAL)
    v1, v2 = registry.load('wine', '1', p.cfg), registry.load('wine', '2', p.cfg)
    P1, P2 = v1.model.predict_proba(rows[v1.features]), v2.model.predict_proba(rows[v2.features])
    assert d['comparison']['n_rows'] == len(rows) == 96
    head, acc = _row(d, 'roc_auc_ovr'), _row(d, 'accuracy')
    assert head['champion'] == pytest.approx(skm.roc_auc_score(rows['cultivar'], P1, multi_class='ovr'), abs=1e-12)
    assert head['challenger'] == pytest.approx(skm.roc_auc_score(rows['cultivar'], P2, multi_class='ovr'), abs=1e-12)
    assert head['ci_low'] > 0.05 and head['test'].startswith('paired bootstrap')
    assert acc['challenger'] == pytest.approx(skm.accuracy_score(rows['cultivar'], v2.model.predict(rows[v2.features])), abs=1e-12)
    assert acc['test'].startswith('McNemar') and acc['p_value'] < 1e-3
    assert _row(d, 'f1_macro')['challenger'] == pytest.approx(
        skm.f1_score(rows['cultivar'], v2.model.predict(rows[v2.features]), average='macro'), abs=1e-12)
    _promote(p, 'wine', 2, d['id'])
    assert registry.resolve_version('wine', 'production', p.cfg) == '2'


@pytest.mark.parametrize('name', ['cancer', 'wine'])
def test_plugin_checks_string_label_and_multiclass_candidates(labels_project, name):
    "The pytest plugin on a staging candidate with string labels / several classes: contract, gates and the example tests pass."
    import re, subprocess, sys
    from mlprod import registry
    from mlprod.testing import write_github_workflow, _plugin_loaded_by_entry_point
    p = labels_project
    mc = p.cfg.model(name)
    start, end = TRAIN if name == 'cancer' else WINE_TRAIN
    df = (p.src.load_cancer if name == 'cancer' else p.src.load_wine)(start, end)
    v = registry.register(p.src.train(df, mc), name, df, features=list(mc.features), categorical=[], window=(start, end), cfg=p.cfg).version
    registry.deploy(name, v, reason='candidate from a PR', cfg=p.cfg)
    tests = p.root/'tests'/name
    write_github_workflow(p.root, model=name, tests=f"tests/{name}", force=True)  # and the example tests of the model
    assert 'model.classes or [0, 1]' in (tests/'test_behaviour.py').read_text()
    plugin = [] if _plugin_loaded_by_entry_point() else ['-p', 'mlprod.testing']
    window = EVAL if name == 'cancer' else WINE_EVAL
    r = subprocess.run([sys.executable, '-m', 'pytest', *plugin, '--mlprod-model', f"{name}@staging", '--mlprod-project', str(p.root),
                        str(tests), '-p', 'no:cacheprovider', '--mlprod-n-boot', '200', '--mlprod-window', *window, '-rA'],
                       cwd=p.root, env=p.env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    metric = 'roc_auc' if name == 'cancer' else 'roc_auc_ovr'
    assert re.search(rf'gates: {name} v{v} \(staging\) vs v\d \(production\): decision PROMOTE; {metric} v\d 0\.\d+ -> v{v} 0\.\d+', out), out
    assert re.search(r'\b6 passed\b', out), out  # 3 built-in checks + 3 example tests
