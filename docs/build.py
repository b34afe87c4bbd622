"""Build the documentation site into `doc_path` (settings.ini, `_docs/`) from the notebooks, the tutorials,
the runbooks and README.md, with MkDocs and the Material theme; `make docs` runs it.

Why not `nbdev_docs`, and what each page is made of: docs/about.md (it is also a page of the site).
Usage: python docs/build.py [--site DIR] [--no-execute] [--keep-source]"""
import argparse, base64, configparser, os, html, importlib, inspect, json, logging, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger('docs')


from mlprod.core import MlprodError


class DocsError(MlprodError):
    "The site cannot be built; the message says what to fix."


def settings() -> dict:
    "The packaging settings (settings.ini) the site needs."
    cp = configparser.ConfigParser()
    cp.read(ROOT/'settings.ini', encoding='utf-8')
    return dict(cp['DEFAULT'])


## One exported symbol: heading, signature with docments, docstring, table of parameters

def _text(o) -> str:
    "A default value as short text (its repr), without memory addresses."
    if o is inspect.Parameter.empty: return ''
    if inspect.isfunction(o) or inspect.isclass(o): return o.__qualname__
    s = repr(o)
    s = re.sub(r' at 0x[0-9a-f]+', '', s)
    return s if len(s) <= 60 else s[:57] + '...'


def _anno(a) -> str:
    if a is inspect.Parameter.empty: return ''
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _inline(s: str) -> str:
    "Escape text for HTML and turn `code` spans into <code>."
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(s or '', quote=False))


def docments_table(obj) -> str:
    "An HTML table of `obj`'s parameters: name, type, default and its docments comment ('' when it has none)."
    from fastcore.docments import docments
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return ''
    comments = docments(obj)
    rows = []
    for p in sig.parameters.values():
        if p.name in ('self', 'cls'): continue
        nm = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '') + p.name
        default = '' if p.default is p.empty else _text(p.default)
        rows.append((nm, _anno(p.annotation), default, comments.get(p.name) or ''))
    ret = _anno(sig.return_annotation)
    if ret or comments.get('return'): rows.append(('<b>returns</b>', ret, '', comments.get('return') or ''))
    if not rows: return ''
    head = '<thead><tr><th></th><th>type</th><th>default</th><th>details</th></tr></thead>'
    code = lambda s: f'<code>{html.escape(s)}</code>' if s else ''
    body = ''.join(f'<tr><td>{n if n.startswith("<") else code(n)}</td><td>{code(t)}</td><td>{code(d)}</td><td>{_inline(c)}</td></tr>'
                   for n, t, d, c in rows)
    return f'<table class="docments">{head}<tbody>{body}</tbody></table>'


def _own_init(cls) -> bool:
    "Whether `cls` takes parameters of its own (a dataclass or an `__init__` defined below `object` and the exception classes)."
    return any('__init__' in vars(k) for k in cls.__mro__ if k.__module__ != 'builtins')


def api_markdown(obj, name: str) -> str:
    "Markdown for one exported symbol, what nbdev's `show_doc` shows: heading, signature with its docments comments, docstring and parameter table."
    from fastcore.docments import DocmentText
    parts = [f'### {name} {{ #{name} }}']  # the symbol owns its plain name as anchor, as on nbdev sites
    if inspect.isclass(obj):
        bases = ', '.join(b.__name__ for b in obj.__bases__ if b is not object)
        sig = f'class {obj.__name__}({bases}):' if bases else f'class {obj.__name__}:'
        if _own_init(obj):
            init = str(DocmentText(obj, maxline=100, docstring=False)).replace(f'def {obj.__name__}(', 'def __init__(', 1)
            sig += '\n' + '\n'.join('    ' + l for l in init.splitlines())
    else:
        try: sig = str(DocmentText(obj, maxline=100, docstring=False))
        except (TypeError, ValueError): sig = name
    parts.append(f'```python\n{sig}\n```')
    doc = inspect.getdoc(obj)
    if doc:
        first, _, rest = doc.partition('\n')
        parts.append(f'*{first.strip()}*' + (f'\n\n{rest.strip()}' if rest.strip() else ''))
    table = docments_table(obj) if not inspect.isclass(obj) or _own_init(obj) else ''
    if table: parts.append(table)
    return '\n\n'.join(parts)


## Links from prose to the API pages

def symbol_index(nbs: Path, lib: str) -> dict:
    """Where each exported function or class is documented ('api/mod.md#name'): under `lib.mod.name` and `mod.name`; under `name` alone a class
    exported by one module only; and per page (key `(page, name)`) the names that page documents."""
    index, classes = {}, {}
    for nb in sorted(nbs.glob('*.ipynb')):
        m = re.search(r'default_exp\s+([\w.]+)', nb.read_text(encoding='utf-8'))
        if not m: continue
        mod, page = m.group(1), f'api/{m.group(1)}.md'
        module = importlib.import_module(f'{lib}.{mod}')
        for name in getattr(module, '__all__', []):
            obj = getattr(module, name, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)): continue  # show_doc documents defs and classes only
            if getattr(obj, '__module__', None) != module.__name__: continue  # re-exported: documented where it is defined
            target = f'{page}#{name}'
            index[f'{lib}.{mod}.{name}'] = index[f'{mod}.{name}'] = index[(page, name)] = target
            if inspect.isclass(obj): classes.setdefault(name, set()).add(target)
    index.update({n: t.pop() for n, t in classes.items() if len(t) == 1})
    return index


_FENCE = re.compile(r'^(\s*)(`{3,}|~{3,})')


def link_symbols(md: str, index: dict, page: str) -> str:
    "Turn `name` and `name()` code spans in prose (not in code blocks) into links to where `name` is documented (see `symbol_index`)."
    out, fence = [], None
    here = Path(page).parent
    def link(m):
        target = index.get(m.group(1)) or index.get((page, m.group(1)))
        if not target: return m.group(0)
        path, anchor = target.split('#')
        rel = Path(os.path.relpath(path, here)).as_posix() if path != page else ''
        return f'[{m.group(0)}]({rel}#{anchor})'
    for line in md.split('\n'):
        f = _FENCE.match(line)
        if f and fence is None: fence = f.group(2)
        elif f and fence and f.group(2).startswith(fence[0]) and len(f.group(2)) >= len(fence) and not line.strip()[len(f.group(2)):]: fence = None
        elif fence is None: line = re.sub(r'(?<![\[\w`])`([A-Za-z_][\w.]*)(?:\(\))?`(?![\]`])', link, line)
        out.append(line)
    return '\n'.join(out)


## Notebooks to Markdown pages

def _fence(text: str, lang: str = '') -> str:
    "A fenced code block that survives backticks inside `text`."
    ticks = '`' * max(3, 1 + max((len(m) for m in re.findall(r'`+', text)), default=0))
    return f'{ticks}{lang}\n{text.rstrip()}\n{ticks}'


_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def _joined(s) -> str: return ''.join(s) if isinstance(s, list) else (s or '')


def output_markdown(out: dict, assets: Path, stem: str, n: int) -> str:
    "Markdown for one saved cell output; images are written next to the page."
    kind = out.get('output_type')
    if kind == 'stream': return _fence(_ANSI.sub('', _joined(out.get('text'))), 'text')
    if kind == 'error': return _fence(_ANSI.sub('', '\n'.join(out.get('traceback', []))), 'text')
    data = out.get('data', {})
    if 'text/markdown' in data: return _joined(data['text/markdown'])
    for mime, ext in (('image/png', 'png'), ('image/jpeg', 'jpg')):
        if mime in data:
            assets.mkdir(parents=True, exist_ok=True)
            f = assets/f'{stem}-{n}.{ext}'
            f.write_bytes(base64.b64decode(_joined(data[mime])))
            alt = html.escape(_joined(data.get('text/plain', 'cell output')).strip()[:120])
            return f'<img src="{assets.name}/{f.name}" alt="{alt}">'
    if 'image/svg+xml' in data: return f'<div class="nb-output">\n{_joined(data["image/svg+xml"])}\n</div>'
    if 'text/html' in data: return f'<div class="nb-output">\n{_joined(data["text/html"])}\n</div>'
    if 'text/plain' in data: return _fence(_joined(data['text/plain']), 'text')
    return ''


def _resolve(module, name: str):
    "The object `show_doc(name)` means, looked up in the notebook's module (`Class.method` for @patch)."
    obj = module
    for part in name.split('.'):
        if not hasattr(obj, part):
            raise DocsError(f'show_doc: got {name!r}; allowed: names defined in {module.__name__}')
        obj = getattr(obj, part)
    return obj


def notebook_markdown(path: Path, lib: str, assets: Path, index: dict | None = None, page: str = '') -> str:
    "A notebook as one Markdown page: prose as is, code and saved outputs, each exported symbol documented from the imported module."
    from nbdev.process import NBProcessor
    from nbdev.processors import add_show_docs, populate_language, strip_ansi, hide_line, rm_header_dash, rm_export, clean_magics, hide_
    proc = NBProcessor(path, procs=[populate_language, add_show_docs, strip_ansi, hide_line, rm_header_dash])
    exp = next((c.directives_['default_exp'][0] for c in proc.nb.cells if 'default_exp' in c.directives_), None)
    module = importlib.import_module(f'{lib}.{exp}') if exp else None
    proc.process()
    for c in proc.nb.cells:  # render show_doc before rm_export drops the exported cells they follow
        m = re.fullmatch(r'show_doc\((.+)\)', (c.source or '').strip()) if c.cell_type == 'code' else None
        if m:
            if module is None: raise DocsError(f'{path.name}: show_doc needs a `#| default_exp` module')
            c.api_ = api_markdown(_resolve(module, m.group(1)), m.group(1))
    for f in (rm_export, clean_magics, hide_): proc.procs = [f]; proc.process()
    parts = []
    for c in proc.nb.cells:
        if getattr(c, 'api_', None): parts.append(c.api_); continue
        if c.cell_type == 'markdown': parts.append(math_markdown(link_symbols(c.source, index, page) if index else c.source)); continue
        if c.cell_type != 'code': continue
        d = c.directives_
        if d.get('echo', ['true'])[0].lower() != 'false' and c.source.strip(): parts.append(_fence(c.source.strip('\n'), 'python'))
        if d.get('output', ['true'])[0].lower() != 'false':
            parts += [output_markdown(o, assets, path.stem, f'{c.idx_}-{i}') for i, o in enumerate(c.get('outputs', []))]
    return '\n\n'.join(p for p in parts if p.strip()) + '\n'


_MATH = re.compile(r'(```.*?```|`[^`\n]*`)|\$\$(.+?)\$\$|(?<![\\$\w])\$([^$\n]+?)\$(?![\w$])', re.S)


def math_markdown(md: str) -> str:
    "LaTeX in prose (`$x$`, `$$x$$`) as MathML, which browsers draw themselves: no script, no font download, no network; code is left alone."
    from latex2mathml.converter import convert
    def one(m):
        if m.group(1): return m.group(1)
        tex, block = (m.group(2), True) if m.group(2) is not None else (m.group(3), False)
        try: out = convert(tex.strip(), display='block' if block else 'inline')
        except Exception as e: raise DocsError(f'math: got {tex.strip()[:80]!r}, which latex2mathml cannot read ({e}); allowed: LaTeX it converts') from None
        return f'\n\n<div class="math">{out}</div>\n\n' if block else out
    return _MATH.sub(one, md)


def _title(md: str, default: str) -> str:
    m = re.search(r'^#\s+(.+)$', md, re.M)
    return m.group(1).strip() if m else default


def execute_notebook(path: Path, work: Path, timeout: int) -> Path:
    "Run a copy of a tutorial (and its folder) in `work`, so it gets a project store of its own; return the executed copy."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    shutil.copytree(path.parent, work, dirs_exist_ok=True)
    nb = nbformat.read(work/path.name, as_version=4)
    t0 = time.time()
    try: NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(work)}}).execute()
    except CellExecutionError as e:
        raise DocsError(f'{path.name}: got a failing cell; allowed: a tutorial that runs (or saved outputs)\n{_ANSI.sub("", str(e))}') from e
    log.info('executed %s in %.0f s', path.name, time.time() - t0)
    nbformat.write(nb, work/path.name)
    return work/path.name


## The site: stage Markdown pages, write mkdocs.yml, build

def _readme_markdown(text: str) -> str:
    "README.md as the home page: without the 'generated' comment, its link to the built site pointing home."
    text = re.sub(r'^<!--.*?-->\s*', '', text, flags=re.S)
    return text.replace('](_docs/index.html)', '](index.md)')


def _has_outputs(path: Path) -> bool:
    "Whether a notebook was saved with any cell output."
    return any(c.get('outputs') for c in json.loads(path.read_text(encoding='utf-8'))['cells'])


def stage(src: Path, execute: bool = True) -> list:
    "Write every page's Markdown under `src`; return the MkDocs nav."
    cfg = settings()
    lib, nbs = cfg['lib_name'], ROOT/cfg.get('nbs_path', 'nbs')
    here = Path(__file__).resolve().parent
    if src.exists(): shutil.rmtree(src)
    (src/'api').mkdir(parents=True)
    index = symbol_index(nbs, lib)
    (src/'index.md').write_text(link_symbols(_readme_markdown((ROOT/'README.md').read_text(encoding='utf-8')), index, 'index.md'), encoding='utf-8')
    nav = [{'Home': 'index.md'}]
    tut_dir = nbs/'tutorials'
    tutorials = sorted(tut_dir.glob('*.ipynb')) if tut_dir.is_dir() else []
    if tutorials:
        (src/'tutorials').mkdir()
        items = []
        for nb in tutorials:
            t0 = time.time()
            run = execute and not _has_outputs(nb)  # saved without outputs (nbdev_clean): run it to show them
            if run:
                work = Path(tempfile.mkdtemp(prefix='mlprod-docs-run-'))
                try: md = notebook_markdown(execute_notebook(nb, work, timeout=900), lib, src/'tutorials'/'assets', index, f'tutorials/{nb.stem}.md')
                finally: shutil.rmtree(work, ignore_errors=True)
            else: md = notebook_markdown(nb, lib, src/'tutorials'/'assets', index, f'tutorials/{nb.stem}.md')
            (src/'tutorials'/f'{nb.stem}.md').write_text(md, encoding='utf-8')
            items.append({_title(md, nb.stem): f'tutorials/{nb.stem}.md'})
            log.info('tutorial %s (%s) in %.1f s', nb.name, 'executed' if run else 'as saved', time.time() - t0)
        nav.append({'Tutorials': items})
    items = []
    for nb in sorted(nbs.glob('*.ipynb')):
        if nb.name == cfg.get('readme_nb', 'index.ipynb'): continue
        t0 = time.time()
        exp = re.search(r'default_exp\s+([\w.]+)', nb.read_text(encoding='utf-8'))
        name = exp.group(1) if exp else re.sub(r'^\d+[a-z]?_', '', nb.stem)
        page = f'api/{name}.md'
        md = notebook_markdown(nb, lib, src/'api'/'assets', index, page)
        (src/page).write_text(md, encoding='utf-8')
        items.append({f'{name}: {_title(md, name)}': page})
        log.info('%s in %.1f s', nb.name, time.time() - t0)
    nav.append({'API': items})
    shutil.copytree(ROOT/'runbooks', src/'runbooks')
    for p in (src/'runbooks').glob('*.md'):
        p.write_text(link_symbols(p.read_text(encoding='utf-8'), index, f'runbooks/{p.name}'), encoding='utf-8')
    books = sorted(p for p in (src/'runbooks').glob('*.md') if p.name != 'README.md')
    nav.append({'Runbooks': [{'All runbooks': 'runbooks/README.md'}] +
                [{_title(p.read_text(encoding='utf-8'), p.stem): f'runbooks/{p.name}'} for p in books]})
    shutil.copy(here/'about.md', src/'about.md')
    shutil.copy(here/'extra.css', src/'extra.css')
    shutil.copy(here/'vendor'/'iframe-worker-shim.js', src/'iframe-worker-shim.js')
    nav.append({'About these docs': 'about.md'})
    return nav


def mkdocs_config(src: Path, site: Path, nav: list) -> dict:
    "The MkDocs configuration: Material theme without web fonts; search works from file:// with the offline plugin and a local iframe-worker shim."
    cfg = settings()
    return {'site_name': cfg.get('title', cfg['lib_name']), 'site_description': cfg.get('description', ''),
            'docs_dir': str(src), 'site_dir': str(site), 'use_directory_urls': False, 'strict': True,  # a broken link or anchor fails the build
            'theme': {'name': 'material', 'font': False, 'features': ['navigation.sections', 'navigation.top', 'toc.follow']},
            'plugins': ['search', 'offline'], 'extra_css': ['extra.css'],
            'extra': {'polyfills': ['iframe-worker-shim.js']},  # else the offline plugin loads it from a CDN
            'markdown_extensions': ['tables', 'attr_list', 'md_in_html', 'admonition', 'pymdownx.superfences',
                                    {'toc': {'permalink': True}}, {'pymdownx.highlight': {'use_pygments': True}}],
            'validation': {'links': {'not_found': 'warn', 'anchors': 'warn', 'unrecognized_links': 'ignore'}}, 'nav': nav}


_REMOTE = re.compile(r'''<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//''', re.I)


def check_offline(site: Path) -> None:
    "Fail when a built page loads anything from the network (a script, stylesheet, font or image URL)."
    bad = [f'{p.relative_to(site)}: {m.group(0)}' for p in site.rglob('*.html') for m in _REMOTE.finditer(p.read_text(encoding='utf-8'))]
    bad += [f'{p.relative_to(site)}: {m.group(0)}' for p in site.rglob('*.css') for m in re.finditer(r'url\(["\']?(?:https?:)?//[^)]*\)', p.read_text(encoding='utf-8'))]
    if bad: raise DocsError(f'site: got {len(bad)} network load(s), e.g. {bad[:3]}; allowed: none (the site must work offline)')


def build(site: Path | None = None, execute: bool = True, keep_source: bool = False) -> Path:
    "Build the whole site into `site` (default: settings.ini `doc_path`); return the path of its index.html."
    import yaml
    t0 = time.time()
    site = Path(site) if site else ROOT/settings().get('doc_path', '_docs')
    src = Path(tempfile.mkdtemp(prefix='mlprod-docs-src-'))/'docs'
    nav = stage(src, execute)
    conf = src.parent/'mkdocs.yml'
    conf.write_text(yaml.safe_dump(mkdocs_config(src, site, nav), sort_keys=False), encoding='utf-8')
    r = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--clean', '-f', str(conf)], capture_output=True, text=True,
                       env=dict(os.environ, NO_MKDOCS_2_WARNING='1'))
    warnings = [l for l in (r.stdout + r.stderr).splitlines() if l.strip() and not l.startswith('INFO')]
    for w in warnings: log.warning('mkdocs: %s', w)
    if r.returncode != 0: raise DocsError(f'mkdocs build: got exit code {r.returncode}; allowed: 0\n' + '\n'.join(warnings[-20:]))
    check_offline(site)
    if keep_source: log.info('staged Markdown kept in %s', src)
    else: shutil.rmtree(src.parent)
    log.info('site in %s (%d pages) in %.0f s', site, len(list(site.rglob('*.html'))), time.time() - t0)
    return site/'index.html'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--site', type=Path, default=None, help='output folder (default: doc_path in settings.ini)')
    p.add_argument('--no-execute', action='store_true', help='show tutorials as saved instead of running those saved without outputs')
    p.add_argument('--keep-source', action='store_true', help='keep the staged Markdown and mkdocs.yml (their folder is logged)')
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='docs: %(message)s')
    try: index = build(a.site, not a.no_execute, a.keep_source)
    except DocsError as e: log.error('%s', e); return 2
    print(f'open {index.as_uri()}')
    return 0


if __name__ == '__main__': sys.exit(main())
