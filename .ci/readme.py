"""Write README.md from nbs/index.ipynb (nbdev_readme needs quarto, which cannot be installed offline).
Markdown cells are copied; code cells become ```python blocks without their `#|` directives;
cells marked `#| hide` are left out."""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
out = []
for c in nb['cells']:
    src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
    lines = src.splitlines()
    directives = [l for l in lines if l.startswith('#|')]
    if any(d.replace(' ', '') == '#|hide' for d in directives): continue
    body = '\n'.join(l for l in lines if not l.startswith('#|')).strip('\n')
    if c['cell_type'] == 'markdown': out.append(body)
    elif body: out.append('```python\n' + body + '\n```')
text = '<!-- Generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file. -->\n\n' + '\n\n'.join(out) + '\n'
(root/'README.md').write_text(text, encoding='utf-8')
