"""Load and scale-out of the scoring service: 8 clients for 30 s on one process, and two processes sharing one
request log on PostgreSQL. Loopback only; every loop is bounded in time."""
import json, os, threading, time
from pathlib import Path

import httpx, pytest, sqlalchemy as sa

from test_serve import Server, _records, store  # noqa: F401  (the `store` fixture: model `flights` v1 in production)

LOAD_SECONDS = float(os.environ.get('MLPROD_LOAD_SECONDS', 30))


def _clients(urls, rows, seconds, n_clients=8, prefix=None):
    "`n_clients` threads posting single rows round-robin over `urls` for `seconds`; returns {status: count} and ids."
    recs = _records(rows)
    statuses, ids, lock = {}, [], threading.Lock()
    deadline = time.monotonic() + seconds
    def run(k):
        url = urls[k % len(urls)]
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            i = 0
            while time.monotonic() < deadline:
                h = {'X-Request-ID': f'{prefix}-{k}-{i}'} if prefix and k % 2 == 0 else {}
                try:
                    r = c.post('/invocations', json={'dataframe_records': [recs[(k * 31 + i) % len(recs)]]}, headers=h)
                    s, rid = r.status_code, r.headers.get('x-request-id')
                except httpx.TransportError as e: s, rid = type(e).__name__, None
                with lock:
                    statuses[s] = statuses.get(s, 0) + 1
                    if s == 200: ids.append(rid)
                i += 1
    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n_clients)]
    for t in ts: t.start()
    for t in ts: t.join(seconds + 60)
    return statuses, ids


def _count(url, where=''):
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            n = c.execute(sa.text(f"select count(*), count(distinct request_id) from requests {where}")).one()
            by = dict(c.execute(sa.text(f"select status, count(*) from requests {where} group by status")).all())
        return n[0], n[1], by
    finally: eng.dispose()


def test_eight_clients_for_30_seconds(store, tmp_path):
    db_url = f"sqlite:///{tmp_path}/load.db"
    srv = Server(store['home'], env={'MLPROD_DB_URL': db_url}).wait_ready()
    try: statuses, ids = _clients([srv.url], store['rows'], LOAD_SECONDS)
    finally: srv.stop()
    n_ok = statuses.get(200, 0)
    print(f"\nload: 8 clients, {LOAD_SECONDS:.0f} s: {n_ok} responses 200 ({n_ok / LOAD_SECONDS:.0f}/s), statuses {statuses}")
    assert set(statuses) == {200}, statuses
    rows, distinct, by = _count(db_url)
    assert by == {200: n_ok} and rows == distinct == n_ok


def test_two_processes_share_one_request_log_on_postgresql(store, postgres):
    db_url = postgres.create_database('serve_log').replace('postgresql://', 'postgresql+psycopg2://')  # psycopg 3 is not installed
    a = Server(store['home'], env={'MLPROD_DB_URL': db_url})
    b = Server(store['home'], env={'MLPROD_DB_URL': db_url})
    try:
        a.wait_ready(); b.wait_ready()
        statuses, ids = _clients([a.url, b.url], store['rows'], min(LOAD_SECONDS, 10), prefix='pg')
    finally:
        a.stop(); b.stop()
    n_ok = statuses.get(200, 0)
    print(f"\nscale-out: 2 processes, {n_ok} responses 200, statuses {statuses}")
    assert set(statuses) == {200}, statuses
    assert len(ids) == len(set(ids)) == n_ok
    rows, distinct, by = _count(db_url)
    assert by == {200: n_ok} and rows == distinct == n_ok  # no lost rows, no id collisions
    eng = sa.create_engine(db_url)
    with eng.connect() as c: logged = set(c.execute(sa.text('select request_id from requests')).scalars())
    eng.dispose()
    assert logged == set(ids)
