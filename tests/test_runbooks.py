"""The runbooks run: every ```sh runnable block executes against one sandbox project, so a command that drifts from the code fails the build."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import ROOT, BIN, free_port
import mlprod.cli
from mlprod import readiness as rd

RUNBOOKS = ROOT/'runbooks'
_SANDBOX = {}


def built_sandbox(tmp_path_factory):
    "The session's sandbox project (built once, shared with test_readiness): (cfg, env)."
    if 'cfg' not in _SANDBOX:
        tmp = tmp_path_factory.mktemp('runbook-sandbox')
        t0 = time.perf_counter()
        cfg = rd.build_sandbox(tmp/'project')
        env = rd.sandbox_env(cfg, PATH=os.pathsep.join([str(BIN), os.environ.get('PATH', '')]), TMPDIR=str(tmp))
        _SANDBOX.update(cfg=cfg, env=env, seconds=time.perf_counter() - t0)
    return _SANDBOX['cfg'], _SANDBOX['env']


@pytest.fixture(scope='module')
def sandbox(tmp_path_factory):
    "The sandbox with a running `mlprod serve flights` (MLPROD_URL) and a free PORT for blocks that start their own."
    cfg, env = built_sandbox(tmp_path_factory)
    with rd.running_service(cfg, 'flights', env) as url:
        yield cfg, {**env, 'MLPROD_URL': url, 'PORT': str(free_port())}
        rd.stop_started_services(cfg.root)


def _explain(checks) -> str:
    return '\n\n'.join(f"{c.name}: {c.message}\n--- code\n{c.details.get('code')}\n--- stdout\n{c.details.get('stdout', '')[-1500:]}"
                       f"\n--- stderr\n{c.details.get('stderr', '')[-1500:]}" for c in checks.failed)


def test_index_and_pages():
    "The index links every incident page; each page exists, has every part and runnable blocks."
    index = (RUNBOOKS/'README.md').read_text()
    for name in rd.EXPECTED_RUNBOOKS[1:]:
        assert f"]({name})" in index, f"README.md does not link {name}"
        text = (RUNBOOKS/name).read_text()
        assert not rd._sections(text), f"{name} lacks sections {rd._sections(text)}"
        assert any(b.runnable for b in rd.runbook_blocks(RUNBOOKS/name)), f"{name} has no runnable block"


def test_every_command_parses():
    "Every mlprod command in every block (runnable or not) is a command of the CLI and parses with its real parser."
    used = {c[0] for p in RUNBOOKS.glob('*.md') for b in rd.runbook_blocks(p) for c in rd.mlprod_commands(b.code)}
    assert {'promote', 'rollback', 'serve', 'monitor', 'alerts'} <= used, used  # the runbooks are read
    assert used <= set(mlprod.cli.COMMANDS), f"commands the runbooks use that the CLI lacks: {sorted(used - set(mlprod.cli.COMMANDS))}"
    assert 'invalid choice' in (rd.parse_command(['no-such-command']) or ''), 'the parser accepts an unknown command'
    r = rd.check_runbooks(RUNBOOKS)
    assert not [c for c in r.checks if c.status != rd.Status.SUCCESS], \
        '\n'.join(f"{c.name}: {c.message}" for c in r.checks if c.status != rd.Status.SUCCESS)


ORDER = [n for n in rd.EXPECTED_RUNBOOKS if n not in ('README.md', 'rollback.md')]


@pytest.mark.parametrize('name', ORDER)
def test_runnable_blocks(sandbox, name):
    "Each runnable block of the runbook exits as stated (0 unless `# expect-exit: N`)."
    cfg, env = sandbox
    r = rd.run_runbook(RUNBOOKS/name, cfg.root, env, timeout=300)
    assert len(r.checks) >= 1
    assert r.ok, _explain(r)


def test_serving_down_started_a_service_that_scores(sandbox):
    "The serving-down runbook's restart really started a second service, which logged its requests."
    cfg, env = sandbox
    pid = cfg.root/f"serve-{env['PORT']}.pid"
    assert pid.is_file(), 'serving-down.md did not leave the pid of the service it started'
    import httpx
    v = httpx.get(f"http://127.0.0.1:{env['PORT']}/version", timeout=5).json()
    from mlprod import registry
    assert str(v['version']) == registry.resolve_version('flights', 'production', cfg=cfg)


def test_rollback_runbook_moves_production_back(sandbox):
    "The rollback runbook moves production to the previous version, and `mlprod history flights` shows the move."
    from mlprod import registry
    cfg, env = sandbox
    before = registry.resolve_version('flights', 'production', cfg=cfg)
    moves = list(registry.history('flights', cfg=cfg))
    expected = registry.previous_production([m for m in moves if m.alias == 'production'], before)
    assert expected and expected != before
    r = rd.run_runbook(RUNBOOKS/'rollback.md', cfg.root, env, timeout=300)
    assert r.ok, _explain(r)
    new = [m for m in registry.history('flights', cfg=cfg)][len(moves):]
    rb = [m for m in new if m.action == 'rollback']
    assert rb and (rb[0].from_version, rb[0].to_version) == (before, expected), [m.summary() for m in new]
    out = subprocess.run(['mlprod', 'history', 'flights', '--alias', 'production'], cwd=cfg.root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = [l for l in out.stdout.splitlines() if 'rollback' in l][-1]
    assert f"v{before} -> v{expected}" in line.replace('  ', ' ') or (f"v{before}" in line and f"v{expected}" in line), out.stdout
    if not any(m.action == 'promote' for m in new):  # a runbook that ends in the rolled-back state
        assert registry.resolve_version('flights', 'production', cfg=cfg) == expected


def test_runbooks_check_command(sandbox):
    "`mlprod runbooks check` checks a folder's commands and records the outcome for readiness."
    cfg, env = sandbox
    out = subprocess.run(['mlprod', 'runbooks', 'check', '--dir', str(RUNBOOKS)], cwd=cfg.root, env=env,
                         capture_output=True, text=True, timeout=120)
    rec = rd.last_runbook_check(RUNBOOKS, cfg)
    assert rec is not None and rec.fingerprint == rd.runbooks_fingerprint(RUNBOOKS)
    assert out.returncode == (0 if rec.ok else 1), out.stdout + out.stderr
    assert 'recorded' in out.stdout
