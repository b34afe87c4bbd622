"""A real JupyterLab session (the venv's `jupyter lab` on 127.0.0.1 with a token, driven by Playwright on Debian's
Chromium): it opens a notebook that shows a comparison and the `mlprod.widgets` panel, runs it, and a person's clicks
promote the staging version (two steps) and run a job to completion. No console error (except the benign JupyterLab
messages listed in BENIGN), no request outside 127.0.0.1, no news or update check. Screenshots land in
reports/screenshots/lab_*.png for a person to look at."""
import json, os, re, secrets, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from conftest import BIN, SHOTS, free_port, offline_env, project_folder, require_system_package

# The one console error JupyterLab 4.6 prints in this session, checked by hand and allowed only after the kernel is
# gone (while the notebook runs and is driven, no console error at all is allowed):
BENIGN = (
    # after the kernel is gone, jupyterlab-manager logs the widget it cannot restore (the test checks the static copy shows)
    'widget model not found',
)

NOTEBOOK = {
    'cells': [
        {'cell_type': 'markdown', 'metadata': {}, 'source': '# Release flights v2'},
        {'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None,
         'source': "from mlprod.evaluate import compare_versions\nfrom mlprod.widgets import panel\n"
                   "comp = compare_versions('flights', 'staging', start='2013-01-08', end='2013-01-15', n_boot=50)\ncomp"},
        {'cell_type': 'code', 'metadata': {}, 'outputs': [], 'execution_count': None, 'source': "p = panel('flights')\np"},
    ],
    'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
    'nbformat': 4, 'nbformat_minor': 5,
}


@pytest.fixture(scope='module')
def lab_project(tmp_path_factory):
    "A flights project with v1 in production and v2 on staging (tiny models), and the notebook to open."
    import dataclasses
    from mlprod.config import DEFAULT_TOML, get_config, reset_config
    from mlprod.data import load_flights
    from mlprod.recipes import train_lightgbm
    from mlprod import registry
    toml = DEFAULT_TOML.replace('reference_sample = 100000', 'reference_sample = 500')
    root, mp = project_folder(tmp_path_factory, 'lab', {'mlprod.toml': toml, 'release.ipynb': json.dumps(NOTEBOOK)})
    reset_config(); cfg = get_config(root)
    df = load_flights('2013-01-01', '2013-01-08').sample(2000, random_state=0).sort_values('time_hour').reset_index(drop=True)
    mc = cfg.model('flights')
    for n in (10, 30): registry.register(train_lightgbm(df, dataclasses.replace(mc, params={'n_estimators': n, 'num_leaves': 7})), 'flights', df, cfg=cfg)
    registry.promote('flights', '1', to='production', reason='first release', cfg=cfg)
    registry.promote('flights', '2', to='staging', reason='candidate', cfg=cfg)
    yield root, cfg
    mp.undo(); reset_config()


def _lab_env(root: Path, tmp: Path) -> dict:
    "Jupyter folders of its own (no user settings), news and update checks off, the app exposed for commands, every cell drawn."
    for d in ('config', 'data', 'runtime', 'settings/@jupyterlab/notebook-extension', 'workspaces'): (tmp/d).mkdir(parents=True, exist_ok=True)
    (tmp/'config'/'jupyter_server_config.json').write_text(json.dumps({
        'LabApp': {'news_url': None, 'check_for_updates_class': 'jupyterlab.handlers.announcements.NeverCheckForUpdate',
                   'expose_app_in_browser': True, 'extension_manager': 'readonly'},
        'ServerApp': {'open_browser': False, 'allow_root': os.name == 'posix' and os.geteuid() == 0}}))
    (tmp/'settings'/'@jupyterlab/notebook-extension'/'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))
    (tmp/'settings'/'@jupyterlab/apputils-extension').mkdir(parents=True, exist_ok=True)
    (tmp/'settings'/'@jupyterlab/apputils-extension'/'notification.jupyterlab-settings').write_text(
        json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))  # no "get notified about Jupyter news?" toast
    return offline_env(JUPYTER_CONFIG_DIR=str(tmp/'config'), JUPYTER_DATA_DIR=str(tmp/'data'), JUPYTER_RUNTIME_DIR=str(tmp/'runtime'),
                       JUPYTERLAB_SETTINGS_DIR=str(tmp/'settings'), JUPYTERLAB_WORKSPACES_DIR=str(tmp/'workspaces'),
                       PYTHONPATH=os.pathsep.join(p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get('PYTHONPATH', '')) if p))


@pytest.fixture(scope='module')
def lab(lab_project, tmp_path_factory):
    "`jupyter lab` serving the project folder on 127.0.0.1; yields its base URL and token."
    root, _ = lab_project
    port, token = free_port(), secrets.token_hex(16)
    log = open(tmp_path_factory.mktemp('lablog')/'jupyter.log', 'w')
    proc = subprocess.Popen([str(BIN/'jupyter'), 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', f'--IdentityProvider.token={token}',
                             f'--ServerApp.root_dir={root}'], cwd=root, env=_lab_env(root, tmp_path_factory.mktemp('jupyter')),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(240):
            try: urllib.request.urlopen(urllib.request.Request(f'{url}/api/status?token={token}'), timeout=2).read(); break
            except OSError: assert proc.poll() is None, Path(log.name).read_text()[-3000:]; time.sleep(0.5)
        else: pytest.fail('jupyter lab did not answer in 120 s: ' + Path(log.name).read_text()[-3000:])
        yield url, token, Path(log.name)
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()




def _shot(page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS/f'lab_{name}.png'), full_page=True)


def _button(page, label: str):
    "The ipywidgets button showing `label` (its icon's glyph is CSS content, so match the element's text)."
    return page.locator('button.jupyter-button', has_text=re.compile(rf'^\s*{re.escape(label)}\s*$'))


def _panel_shot(page, name: str):
    "Screenshot the panel's output (JupyterLab scrolls inside the notebook, so a page screenshot would miss it)."
    SHOTS.mkdir(parents=True, exist_ok=True)
    out = page.locator('.jp-OutputArea-output', has=page.locator('.widget-vbox')).first
    out.scroll_into_view_if_needed()
    out.screenshot(path=str(SHOTS/f'lab_{name}.png'))


def _wait_text(locator, pattern: str, timeout: float = 120):
    "Wait until `locator`'s text matches `pattern`; return the text."
    t0, text = time.time(), ''
    while time.time() - t0 < timeout:
        text = locator.inner_text() if locator.count() else ''
        if re.search(pattern, text): return text
        time.sleep(0.25)
    raise AssertionError(f'{pattern!r} did not appear in {timeout} s; text: {text[-1500:]}')


def test_release_from_jupyterlab(lab_project, lab, browser):
    root, cfg = lab_project
    url, token, log = lab
    from mlprod import registry
    ctx = browser.new_context(viewport={'width': 1280, 'height': 1400})
    errors, foreign = [], []
    ctx.route('**/*', lambda route: route.continue_() if route.request.url.startswith((url, 'data:', 'blob:'))
              else (foreign.append(route.request.url), route.abort())[1])
    page = ctx.new_page()
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    t0 = time.time()
    page.goto(f'{url}/lab/tree/release.ipynb?token={token}', wait_until='domcontentloaded')
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    nb = page.locator('.jp-NotebookPanel:visible .jp-Notebook')
    _wait_text(nb, r'Roll back production', timeout=180)
    text = _wait_text(nb, r'production: v1 · staging: v2')
    opened = time.time() - t0
    assert 'flights' in text and re.search(r'(promote|reject|needs[ -]review)', text), text[:2000]  # the comparison's decision
    assert '+00:00' not in text and re.search(r'\d{4}-\d\d-\d\d \d\d:\d\d UTC', text)  # readable times
    version = page.locator('.widget-dropdown', has=page.locator('label', has_text=re.compile(r'^version$'))).locator('select')
    assert version.evaluate('s => s.options[s.selectedIndex].text').replace('\xa0', ' ') == 'v2 (staging)'  # preselected: the staging version
    for label in ('force (no passing comparison)', 'parameters (JSON)', 'Roll back production'):  # not cut off
        el = page.get_by_text(label, exact=True).first
        assert el.evaluate('e => e.scrollWidth <= e.clientWidth + 1'), f'{label!r} is cut off'
    assert page.locator('.mlprod-panel-static').count() == 1 and page.locator('.mlprod-panel-static').is_hidden()  # the live widget hides the copy
    _shot(page, 'opened'); _panel_shot(page, 'panel')

    # promote v2 to production: two steps
    page.locator('input[placeholder="why (kept in the history)"]').fill('beats v1 on January')
    page.locator('.widget-checkbox', has_text='force (no passing comparison)').locator('input').check()
    _button(page, 'Promote').click()
    _wait_text(nb, r'Promote flights v2 to production \(forced\)\? Click Confirm')
    assert registry.resolve_version('flights', 'production', cfg=cfg) == '1'  # nothing moved before Confirm
    _button(page, 'Confirm').click()
    _wait_text(nb, r'production: v2')
    assert registry.resolve_version('flights', 'production', cfg=cfg) == '2'
    assert [m.action for m in registry.history('flights', cfg=cfg)][-1] == 'promote'
    _panel_shot(page, 'promoted')

    # run the smoke job: parameters shown with defaults, the button disabled while it runs, then a report link
    page.locator('.widget-dropdown', has=page.locator('label', has_text=re.compile(r'^job$'))).locator('select').select_option('smoke')
    _wait_text(nb, r'message\s+"hello"')
    page.locator('input[placeholder=\'{"start": "2013-03-01"}\']').fill('{"message": "from JupyterLab", "sleep": 2}')
    run = _button(page, 'Run job')
    run.click()
    page.wait_for_function("() => [...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'Run job' && b.disabled)", timeout=30_000)
    _panel_shot(page, 'running')
    _wait_text(nb, r'smoke: success in [\d.]+ s open the report', timeout=180)
    # the message and the re-enabled button are two widget updates: wait for the second as well
    page.wait_for_function("() => [...document.querySelectorAll('button')].some(b => b.textContent.trim() === 'Run job' && !b.disabled)", timeout=30_000)
    assert not run.is_disabled()
    link = page.get_by_role('link', name='open the report')
    href = link.get_attribute('href')
    # JupyterLab resolved the relative link against the notebook's folder: it serves the report itself
    assert re.match(rf'{re.escape(url)}/files/reports/flights/smoke/\d{{4}}-\d\d-\d\dT\d{{6}}Z\.html', href), href
    served = page.request.get(href)
    assert served.ok and 'from JupyterLab' in served.text()
    frame = page.frame_locator('iframe[srcdoc]')
    assert 'from JupyterLab' in frame.locator('body').inner_text()
    _panel_shot(page, 'job_done')
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)

    # the kernel goes away; the saved notebook, opened again, shows the panel's static copy instead of an error
    for sess in page.request.get(f'{url}/api/sessions?token={token}').json():
        assert page.request.delete(f"{url}/api/sessions/{sess['id']}?token={token}").ok
    live_errors = list(errors)
    page.reload(wait_until='domcontentloaded')
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.context", timeout=120_000)
    outs = page.locator('.jp-Cell').last.locator('.jp-OutputArea-output')
    _wait_text(outs.last, r'Error displaying widget', timeout=60)  # what JupyterLab shows for a widget without its model…
    static = page.locator('.mlprod-panel-static')
    assert static.is_visible() and 'production: v2' in static.inner_text() and 'static copy of the panel' in static.inner_text()  # …and the copy above it
    static.scroll_into_view_if_needed(); outs.first.screenshot(path=str(SHOTS/'lab_after_restart.png'))
    ctx.close()

    saved = [o['data'] for o in json.loads((root/'release.ipynb').read_text())['cells'][2]['outputs']]
    assert 'mlprod-panel-static' in ''.join(saved[0]['text/html']) and 'application/vnd.jupyter.widget-view+json' in saved[1]
    assert live_errors == [], live_errors
    bad = [e for e in errors if not any(b in e for b in BENIGN)]
    assert bad == [], bad
    assert foreign == [], foreign
    assert 'Failed to fetch news' not in log.read_text() and 'pypi.org' not in log.read_text()
    print(f'JupyterLab: notebook opened and ran in {opened:.1f} s; console errors after the kernel was gone: {[e.splitlines()[0] for e in errors]}')
