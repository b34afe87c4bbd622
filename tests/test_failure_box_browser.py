"""The failure box of a job page in a real browser: a long error (a path, a traceback line without spaces) wraps
inside the box, so the page never scrolls sideways, and it is still shown as text (escaped), not as markup."""
import nbformat

from conftest import browser, open_offline  # noqa: F401 (fixture)

# what a failed job says when a long path or an identifier without spaces is in its error
LONG = 'FileNotFoundError: /data/' + '/'.join(f"partition_{i:04d}_of_the_nightly_export" for i in range(40)) + '/part-0.parquet'
WIDE_JS = "() => ({page: document.documentElement.scrollWidth, view: document.documentElement.clientWidth, " \
          "pre: [...document.querySelectorAll('.mlprod-failure pre')].map(p => [p.scrollWidth, p.clientWidth])})"


def test_failure_box_wraps_long_errors(browser, tmp_path):
    from mlprod.jobs import report_page
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('# Score'), nbformat.v4.new_code_cell('run()')])
    html = report_page(nb, 'Score', {'job': 'score', 'model': 'm', 'status': 'failed'},
                       failure={'what': 'cell 2', 'where': LONG[:300], 'error': LONG + '\n<script>alert(1)</script>', 'source': 'x = ' + 'y' * 500})
    path = tmp_path / 'failed.html'
    path.write_text(html)
    text, errors, foreign, size = open_offline(browser, path, 'failure-box.png', WIDE_JS)
    assert errors == [] and foreign == [], (errors, foreign)
    assert size['page'] <= size['view'], f"the page scrolls sideways: {size}"
    assert size['pre'] and all(sw <= cw for sw, cw in size['pre']), f"an error box scrolls sideways: {size}"
    assert LONG[:60] in text and '<script>alert(1)</script>' in text  # escaped: shown as text, not run
