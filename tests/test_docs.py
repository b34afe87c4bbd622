"""The documentation site (`make docs`, docs/build.py) builds and reads well in headless Chromium with the network off:
the home page loads, the nav reaches an API page with the docments table of `mlprod.registry.promote` and a runbook,
no console error, no request that leaves the disk. Screenshots land in reports/screenshots/docs_*.png."""
import os, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT
from conftest import CHROMIUM, FLAGS, SHOTS


@pytest.fixture(scope='session')
def docs_site(tmp_path_factory):
    "The site built once per session by the same script `make docs` runs, into a temporary folder."
    site = tmp_path_factory.mktemp('docs')/'_docs'
    r = subprocess.run([sys.executable, str(ROOT/'docs'/'build.py'), '--site', str(site)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (site/'index.html').exists() and (site/'api'/'registry.html').exists()
    return site


@pytest.fixture(scope='module')
def page():
    "A Chromium page with the network off that records console errors and every non-file request."
    if not Path(CHROMIUM).exists():  # fail, not skip: the site must be checked in a browser
        pytest.fail(f"Chromium is not installed ({CHROMIUM}): install Debian's chromium (make system-deps)", pytrace=False)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        ctx = b.new_context(viewport={'width': 1280, 'height': 900}, offline=True)
        pg = ctx.new_page()
        pg.errors, pg.foreign = [], []
        pg.on('console', lambda m: pg.errors.append(m.text) if m.type == 'error' else None)
        pg.on('pageerror', lambda e: pg.errors.append(str(e)))
        pg.on('request', lambda r: pg.foreign.append(r.url) if not r.url.startswith(('file://', 'data:')) else None)
        yield pg
        b.close()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS/name))


def _builder():
    import importlib.util
    spec = importlib.util.spec_from_file_location('docs_build', ROOT/'docs'/'build.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_api_markdown_documents_every_parameter():
    "Signature with docments comments, one-line docstring, and a table that survives `|` in types and `<` in defaults."
    def scale(x:float, # the value
              unit:str|None=None, # `km` or `mi`; None keeps it
              *, factory=dict, # made per call
              **kw)->float:
        "Scale `x`."
    md = _builder().api_markdown(scale, 'scale')
    assert md.startswith('### scale { #scale }') and 'def scale(' in md and 'x:float, # the value' in md
    assert '*Scale `x`.*' in md
    table = md[md.index('<table'):]
    assert '<td><code>unit</code></td><td><code>str | None</code></td><td><code>None</code></td><td><code>km</code> or <code>mi</code>; None keeps it</td>' in table
    assert '<td><code>factory</code></td><td></td><td><code>dict</code></td><td>made per call</td>' in table
    assert '<code>**kw</code>' in table and '<b>returns</b></td><td><code>float</code>' in table


def test_prose_links_to_api_pages():
    "Qualified names link anywhere, a page's own names link on that page, unique classes everywhere; code blocks are left alone."
    index = {'mlprod.registry.promote': 'api/registry.md#promote', ('api/registry.md', 'load'): 'api/registry.md#load',
             'Check': 'api/core.md#Check'}
    md = "Use `mlprod.registry.promote` and `load()`; `Check` too; `other`, [`Check`](x.md).\n```python\n`Check`\n```\n`load`"
    link = _builder().link_symbols
    test = link(md, index, 'api/registry.md')
    assert test == ("Use [`mlprod.registry.promote`](#promote) and [`load()`](#load); [`Check`](core.md#Check) too; `other`, "
                    "[`Check`](x.md).\n```python\n`Check`\n```\n[`load`](#load)"), test
    assert link('see `Check`, `load`', index, 'runbooks/rollback.md') == 'see [`Check`](../api/core.md#Check), `load`'


def test_site_has_every_part(docs_site):
    pages = {p.relative_to(docs_site).as_posix() for p in docs_site.rglob('*.html')}
    notebooks = [p for p in (ROOT/'nbs').glob('[0-9]*.ipynb')]
    assert len([p for p in pages if p.startswith('api/')]) == len(notebooks)
    assert {'index.html', 'about.html', 'runbooks/index.html', 'runbooks/rollback.html'} <= pages
    tutorials = list((ROOT/'nbs'/'tutorials').glob('*.ipynb'))
    assert {f'tutorials/{t.stem}.html' for t in tutorials} <= pages
    for t in tutorials:  # shown with outputs: saved ones, or made by running it during the build
        assert 'nb-output' in (docs_site/'tutorials'/f'{t.stem}.html').read_text(encoding='utf-8') or \
               'language-text' in (docs_site/'tutorials'/f'{t.stem}.html').read_text(encoding='utf-8'), t.name


def test_nav_reaches_api_docments_and_runbook_offline(docs_site, page):
    page.goto((docs_site/'index.html').as_uri(), wait_until='load')
    assert 'mlprod' in page.title() and 'From the command line' in page.inner_text('article')
    shot(page, 'docs_home.png')
    page.click('nav.md-nav--primary a:has-text("registry: Registry")')
    page.wait_for_load_state('load')
    assert page.url.endswith('/api/registry.html')
    heading = page.locator('h3#promote')
    heading.scroll_into_view_if_needed()
    rows = page.evaluate('''() => {
        let el = document.getElementById('promote');
        while (el && !(el.tagName === 'TABLE')) el = el.nextElementSibling;
        return el ? [...el.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim())) : null }''')
    assert rows, 'no docments table after the promote heading'
    by_name = {r[0]: r for r in rows}
    assert by_name['name'][1:] == ['str', '', 'registered model name']
    assert by_name['to'][2] == "'production'" and by_name['force'][1:3] == ['bool', 'False']
    assert 'why' in by_name['reason'][3]
    assert 'def promote(' in page.inner_text('article') and 'Point alias' in page.inner_text('article')
    page.evaluate("document.getElementById('promote').scrollIntoView()")
    shot(page, 'docs_api_promote.png')
    page.click('nav.md-nav--primary a:has-text("Bad deployment")')
    page.wait_for_load_state('load')
    assert page.url.endswith('/runbooks/rollback.html')
    assert 'mlprod rollback' in page.inner_text('article')
    shot(page, 'docs_runbook.png')
    assert page.errors == [] and page.foreign == []


def test_search_works_from_disk(docs_site, page):
    "Material's search runs in a worker; from file:// it needs the local iframe-worker shim, not a CDN."
    page.goto((docs_site/'api'/'core.html').as_uri(), wait_until='load')
    page.click('input.md-search__input')
    page.wait_for_function("() => { const m = document.querySelector('.md-search-result__meta');"
                           " return m && m.innerText.trim() && !/initializ/i.test(m.innerText) }", timeout=15000)
    page.type('input.md-search__input', 'rollback', delay=20)
    page.wait_for_selector('.md-search-result__item', timeout=15000)
    titles = page.locator('.md-search-result__item').all_inner_texts()
    assert any('rollback' in t.lower() for t in titles), titles
    shot(page, 'docs_search.png')
    page.locator('.md-search-result__item a').first.click()
    page.wait_for_load_state('load')
    assert 'rollback' in page.url
    assert page.errors == [] and page.foreign == []


def test_math_is_drawn_by_the_browser_offline(docs_site, page):
    "LaTeX in the notebooks' prose reaches the site as MathML (no MathJax, no CDN): drawn with a size, no raw `$\\alpha$` left."
    import sys
    sys.path.insert(0, str(ROOT/'docs'))
    from build import math_markdown
    md = math_markdown('level $\\alpha/2$, `$HOME` and $5 to $10 stay\n\n$$P(x) \\ge 1-\\alpha$$')
    assert md.count('<math') == 2 and '`$HOME`' in md and '$5 to $10' in md and 'display="block"' in md
    html_ = (docs_site/'api'/'sequential.html').read_text(encoding='utf-8')
    assert html_.count('<math') > 20 and '$\\alpha' not in html_ and '\\theta' not in html_
    page.goto((docs_site/'api'/'sequential.html').as_uri(), wait_until='load')
    box = page.locator('div.math math').first.bounding_box()
    assert box and box['width'] > 100 and box['height'] > 10, box  # laid out as a formula, not an empty element
    page.locator('div.math').first.scroll_into_view_if_needed()
    shot(page, 'docs_math.png')
    assert page.errors == [] and page.foreign == []
