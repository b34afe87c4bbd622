"""The CI loop on real flights: the pytest plugin fails a staging candidate trained on shuffled labels and passes a good one;
`mlprod init --ci github`'s workflow is valid YAML and the commands it runs (`mlprod ci check`, `mlprod ci promote`) work here."""
import dataclasses, os, re, shlex, subprocess, sys, time, types
import numpy as np, pytest
from conftest import offline_env

N_BOOT = '200'  # bootstrap replicates of each comparison: enough for clear decisions, quick on 2 cores


@pytest.fixture(scope='module')
def ci_project(tmp_path_factory):
    "A project with flights v1 (Jan–Feb) in production, v2 (Mar–Apr, shuffled labels) and v3 (Mar–Apr) registered; the workflow and example tests written."
    from mlprod.config import get_config, reset_config, DEFAULT_TOML
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod.testing import write_github_workflow
    from mlprod import registry
    mp = pytest.MonkeyPatch()
    for k in ('MLPROD_HOME', 'MLFLOW_TRACKING_URI', 'MLPROD_DB_URL', 'MLPROD_CONFIG'): mp.delenv(k, raising=False)
    root = tmp_path_factory.mktemp('ci')
    mp.chdir(root); mp.setenv('MLPROD_ACTOR', 'ci-tester')
    # single-row latency on a busy 2-core machine is noisy: a generous budget keeps the decisions about accuracy
    toml = DEFAULT_TOML.replace('latency_p95_ms = 50.0', 'latency_p95_ms = 1000.0').replace('n_estimators = 200', 'n_estimators = 40')
    (root/'mlprod.toml').write_text(toml, encoding='utf-8')
    reset_config()
    cfg = get_config(root)
    mc = cfg.model('flights')
    assert mc.params['n_estimators'] == 40
    jan_feb, mar_apr = load_flights('2013-01-01', '2013-03-01'), load_flights('2013-03-01', '2013-05-01')
    shuffled = mar_apr.assign(delayed=np.random.default_rng(0).permutation(mar_apr['delayed'].to_numpy()))
    t0 = time.perf_counter()
    versions = [registry.register(train_lightgbm(df, mc), 'flights', df, window=w, cfg=cfg).version
                for df, w in ((jan_feb, ('2013-01-01', '2013-03-01')), (shuffled, ('2013-03-01', '2013-05-01')),
                              (mar_apr, ('2013-03-01', '2013-05-01')))]
    assert versions == ['1', '2', '3']
    registry.promote('flights', 1, reason='first model: Jan-Feb', force=True, cfg=cfg)
    wf = write_github_workflow(root, model='flights')
    print(f"\nsetup: 3 versions trained and registered in {time.perf_counter() - t0:.1f} s")
    yield types.SimpleNamespace(root=root, cfg=cfg, workflow=wf)
    registry.clear_cache(); reset_config(); mp.undo()


def _pytest_run(root, *extra):
    "The plugin run a team's CI does, in a subprocess: (exit code, output)."
    from mlprod.testing import _plugin_loaded_by_entry_point
    plugin = [] if _plugin_loaded_by_entry_point() else ['-p', 'mlprod.testing']  # installed under another name: -p would load it twice
    cmd = [sys.executable, '-m', 'pytest', *plugin, '--mlprod-model', 'flights@staging', '--mlprod-project', str(root),
           str(root/'tests'/'model'), '-p', 'no:cacheprovider', '--mlprod-n-boot', N_BOOT, *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=root, env=offline_env(), capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr, time.perf_counter() - t0


def _mlprod(capfd, *argv):
    "`mlprod ARGV` in-process (the CLI as installed: no command added); (exit code, stdout+stderr incl. child processes)."
    from mlprod import cli
    capfd.readouterr()
    code = cli.main(list(map(str, argv)))
    out = capfd.readouterr()
    return code, out.out + out.err


def _runs(wf:dict, job:str) -> list:
    "The shell commands of a workflow job, one string per `run` line."
    return [l.strip() for s in wf['jobs'][job]['steps'] for l in s.get('run', '').splitlines() if l.strip()]


def test_workflow_is_valid_and_calls_mlprod_ci(ci_project):
    "The written workflow parses, checks on pull requests and promotes on pushes to main; the example tests are in place."
    import yaml
    wf = yaml.safe_load(ci_project.workflow.read_text())
    assert ci_project.workflow == ci_project.root/'.github'/'workflows'/'mlprod.yml'
    assert set(wf['on']) == {'pull_request', 'push'} and wf['on']['push'] == {'branches': ['main']}
    assert wf['jobs']['check']['if'] == "github.event_name == 'pull_request'"
    assert wf['jobs']['promote']['if'] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert _runs(wf, 'check')[-1] == 'mlprod ci check flights --tests tests/model'
    assert _runs(wf, 'promote')[-1] == 'mlprod ci promote flights --reason "merged $GITHUB_SHA"'
    assert wf['env']['MLFLOW_TRACKING_URI'] == '${{ secrets.MLFLOW_TRACKING_URI }}'
    tests = (ci_project.root/'tests'/'model'/'test_behaviour.py').read_text()
    assert 'assert_invariant(' in tests and 'assert_directional(' in tests and '"precip"' in tests


def test_shuffled_labels_candidate_fails(ci_project):
    "A candidate trained on shuffled labels in staging: exit 1, the gate failure with both AUCs, the difference, its CI and p."
    from mlprod import registry
    registry.deploy('flights', 2, reason='candidate from a PR (shuffled labels)', cfg=ci_project.cfg)
    code, out, secs = _pytest_run(ci_project.root)
    print(f"\n--- shuffled-label candidate: exit {code} in {secs:.1f} s ---\n{out}")
    assert code == 1, out
    assert re.search(r'mlprod\[flights@staging\]::gates\[production\] FAILED|FAILED mlprod\[flights@staging\]::gates\[production\]', out), out
    m = re.search(r'gates: flights v2 \(staging\) vs v1 \(production\): decision (REJECT|NEEDS_REVIEW); '
                  r'roc_auc v1 (0\.\d+) -> v2 (0\.\d+), diff ([-+]0\.\d+), 95% CI (-?0\.\d+) … (-?0\.\d+), p=(\S+)', out)
    assert m, out
    auc_prod, auc_cand, diff = float(m[2]), float(m[3]), float(m[4])
    assert auc_prod > 0.65 and 0.45 < auc_cand < 0.56 and diff < -0.1
    assert float(m[5]) < diff < float(m[6]) < 0
    assert 'the candidate may not replace production: the decision must be PROMOTE' in out
    assert 'gate:roc_auc:min_value: roc_auc of flights v2 is' in out  # the reasons
    # the user-written directional expectation catches it too, with figures; the contract and leakage invariances pass
    assert re.search(r'FAILED tests/model/test_behaviour.py::test_more_precipitation_does_not_lower_delay_risk', out), out
    assert re.search(r'predictions fell on \d+ of 500 rows when precip increased by 0.5: [\d.]+ % held, at least 90 % required', out), out
    for ok in ('contract[reference]: 55,541 rows of the training snapshot fit the schema', 'contract[window]: 2013-05-01 … 2013-05-31'):
        assert ok in out, out
    assert not re.search(r'FAILED .*(contract|test_label|test_timestamp|test_scores_are)', out), out


def test_good_candidate_passes_and_is_promoted(ci_project, capfd):
    "A candidate trained on a later window (Mar–Apr) passes on May with the workflow's own commands, and `ci promote` promotes it."
    import yaml
    from mlprod import registry
    cfg, root = ci_project.cfg, ci_project.root
    registry.deploy('flights', 3, reason='candidate from a PR (Mar-Apr)', cfg=cfg)
    wf = yaml.safe_load(ci_project.workflow.read_text())
    check = shlex.split(_runs(wf, 'check')[-1])
    assert check[0] == 'mlprod'
    t0 = time.perf_counter()
    code, out = _mlprod(capfd, '--project', root, *check[1:], '--n-boot', N_BOOT)
    with capfd.disabled(): print(f"\n--- good candidate, `{' '.join(check)}`: exit {code} in {time.perf_counter() - t0:.1f} s ---\n{out[-5000:]}")
    assert code == 0, out
    assert '--mlprod-model flights@staging' in out  # the command it ran is shown
    assert re.search(r'gates: flights v3 \(staging\) vs v1 \(production\): decision PROMOTE; roc_auc v1 0\.\d+ -> v3 0\.\d+, diff \+0\.\d+', out), out
    assert re.search(r'\b[78] passed\b', out), out  # 3 built-in checks + 5 example tests
    assert 'contract[window]: 2013-05-01 … 2013-05-31' in out and 'unseen' in out  # new destinations in May: a warning, not a failure

    # promote on merge: the workflow's command, with the SHA GitHub would give
    promote = shlex.split(os.path.expandvars(_runs(wf, 'promote')[-1].replace('$GITHUB_SHA', 'abc1234')))
    code, out = _mlprod(capfd, '--project', root, *promote[1:], '--n-boot', N_BOOT)
    with capfd.disabled(): print(f"\n--- `{' '.join(promote)}`: exit {code} ---\n{out[-3000:]}")
    assert code == 0, out
    assert registry.resolve_version('flights', 'production', cfg) == '3'
    last = registry.history('flights', alias='production', cfg=cfg)[-1]
    assert (last.from_version, last.to_version, last.reason, last.forced) == ('1', '3', 'merged abc1234', False)
    assert last.decision_id and last.decision_id in out and 'next: mlprod promote' not in out
    code, out = _mlprod(capfd, '--project', root, 'ci', 'promote', 'flights')
    assert code == 0 and 'already in production' in out

    # a bad candidate reaches staging after a merge anyway: `ci promote` refuses and production stays
    registry.deploy('flights', 2, reason='a bad candidate', cfg=cfg)
    code, out = _mlprod(capfd, '--project', root, 'ci', 'promote', 'flights', '--n-boot', N_BOOT)
    assert code == 1 and 'not promoted: the decision is' in out, out
    assert registry.resolve_version('flights', 'production', cfg) == '3'
