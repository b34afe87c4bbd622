"""Alerts reach real receivers on loopback: a webhook HTTP server and an aiosmtpd SMTP server."""
import datetime as dt, email, json, subprocess, sys, textwrap, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from conftest import free_port, offline_env
from mlprod import alerts
from mlprod.alerts import (AlertRule, RetryPolicy, alert_history, delivery_history, evaluate, fire, resolve,
                           send_test_alert)
from mlprod.config import parse_config
from mlprod.core import Check, Status

T0 = dt.datetime(2026, 3, 1, 6, tzinfo=dt.timezone.utc)
LATENCY_BAD = Check('service:latency_p95', 'FAIL', 82.0, '≤ 50', 'latency p95 82 ms > 50 ms')
LATENCY_OK = Check('service:latency_p95', 'SUCCESS', 21.0, '≤ 50', 'latency p95 21 ms')
DRIFT_BAD = Check('drift:share', 'FAIL', 0.6, '< 0.5', '9 of 15 columns drifted')


def at(minutes): return T0 + dt.timedelta(minutes=minutes)


class Hook:
    "A webhook receiver on loopback that records JSON bodies and answers `status` after `delay` seconds."
    def __init__(self, status=200, delay=0.0):
        self.bodies, self.hits, self.status = [], 0, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                outer.hits += 1
                if delay: time.sleep(delay)
                if outer.status < 300: outer.bodies.append(json.loads(body))
                try:
                    self.send_response(outer.status)
                    self.send_header('Content-Type', 'text/plain'); self.end_headers()
                    self.wfile.write(b'ok' if outer.status < 300 else b'internal error')
                except OSError: pass  # the client gave up (timeout test)

            def log_message(self, *a): pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self): self.server.shutdown(); self.server.server_close()


class Inbox:
    "An aiosmtpd handler that keeps every message."
    def __init__(self): self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return '250 OK'


@pytest.fixture
def hook():
    h = Hook(); yield h; h.close()


@pytest.fixture
def smtp():
    inbox, port = Inbox(), free_port()
    c = Controller(inbox, hostname='127.0.0.1', port=port); c.start()
    inbox.port = port
    yield inbox
    c.stop()


def make_project(folder, hook_url, smtp_port, cooldown=60, rules=None):
    "Write mlprod.toml with a file, a webhook and an e-mail channel; return its config."
    toml = textwrap.dedent(f'''\
        [models.flights]
        target = "delayed"
        time_column = "time_hour"
        [alerts]
        cooldown_minutes = {cooldown}
        [[alerts.channels]]
        type = "file"
        path = "alerts.jsonl"
        min_severity = "info"
        [[alerts.channels]]
        type = "webhook"
        name = "slack"
        url = "{hook_url}"
        [[alerts.channels]]
        type = "email"
        name = "oncall"
        smtp_host = "127.0.0.1"
        smtp_port = {smtp_port}
        sender = "mlprod@example.com"
        to = ["oncall@example.com", "ml@example.com"]
        min_severity = "critical"
        ''')
    (folder / 'mlprod.toml').write_text(toml)
    return parse_config(toml, root=folder, env={})


def file_lines(cfg): 
    p = cfg.state_dir / 'alerts.jsonl'
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def test_alerts_reach_file_webhook_and_smtp_once_per_cooldown(project, hook, smtp):
    cfg = make_project(project, hook.url, smtp.port)
    ev = evaluate([LATENCY_BAD], 'flights', cfg, now=at(0))
    assert [(e.action, e.severity) for e in ev] == [('fired', 'critical')]
    assert [(d.channel, d.ok) for d in ev[0].deliveries] == [('file', True), ('slack', True), ('oncall', True)]
    assert (len(file_lines(cfg)), len(hook.bodies), len(smtp.messages)) == (1, 1, 1)

    # repeats inside the cooldown are counted, not sent
    for m in (5, 30, 59):
        assert [e.action for e in evaluate([LATENCY_BAD], 'flights', cfg, now=at(m))] == ['suppressed']
    assert (len(file_lines(cfg)), len(hook.bodies), len(smtp.messages)) == (1, 1, 1)
    assert alert_history(cfg=cfg, open_only=True)[0].count == 4

    # after the cooldown: one reminder, then quiet again
    assert [e.action for e in evaluate([LATENCY_BAD], 'flights', cfg, now=at(60))] == ['repeated']
    assert [e.action for e in evaluate([LATENCY_BAD], 'flights', cfg, now=at(90))] == ['suppressed']
    assert (len(file_lines(cfg)), len(hook.bodies), len(smtp.messages)) == (2, 2, 2)

    # passing again resolves and notifies every channel that got the alert
    ev = evaluate([LATENCY_OK], 'flights', cfg, now=at(95))
    assert [(e.action, e.count) for e in ev] == [('resolved', 6)]
    assert (len(file_lines(cfg)), len(hook.bodies), len(smtp.messages)) == (3, 3, 3)
    assert evaluate([LATENCY_OK], 'flights', cfg, now=at(100)) == ()

    first, reminder, resolved = hook.bodies
    assert first['text'] == ('[CRITICAL] flights/service:latency_p95 failing: latency p95 82 ms > 50 ms '
                             '(service:latency_p95 FAIL: observed 82, expected ≤ 50)')
    assert (first['kind'], first['key'], first['model'], first['check'], first['observed']) == \
           ('alert', 'flights/service:latency_p95', 'flights', 'service:latency_p95', 82.0)
    assert reminder['kind'] == 'reminder' and '(5 times since 2026-03-01 06:00 UTC)' in reminder['text']
    assert resolved['kind'] == 'resolved' and resolved['text'].startswith(
        '[RESOLVED] flights/service:latency_p95 passes again after 6 failing evaluation(s)')
    assert first['alert_id'] == resolved['alert_id']

    rcpts, msg = smtp.messages[0]
    assert rcpts == ['oncall@example.com', 'ml@example.com']
    assert msg['Subject'] == '[CRITICAL] flights/service:latency_p95 failing' and msg['From'] == 'mlprod@example.com'
    assert '"observed": 82.0' in msg.get_payload(decode=True).decode()
    assert smtp.messages[2][1]['Subject'].startswith('[RESOLVED] flights/service:latency_p95')

    h = alert_history(cfg=cfg)
    assert [(a.key, a.state, a.count, a.resolved_at) for a in h] == [('flights/service:latency_p95', 'resolved', 6, at(95))]
    assert len(delivery_history(cfg, alert_id=h[0].id)) == 9 and all(d.ok for d in delivery_history(cfg))


def test_min_severity_filters_channels(project, hook, smtp):
    cfg = make_project(project, hook.url, smtp.port)
    ev = evaluate([DRIFT_BAD], 'flights', cfg, now=at(0))  # a warning: not for the critical-only mailbox
    assert [(e.action, e.severity) for e in ev] == [('fired', 'warning')]
    assert (len(file_lines(cfg)), len(hook.bodies), len(smtp.messages)) == (1, 1, 0)


def test_for_n_windows_across_separate_calls(project, hook, smtp):
    cfg = make_project(project, hook.url, smtp.port)
    rules = [AlertRule('drift:share', 'critical', for_windows=3)]
    actions = [[e.action for e in evaluate([c], 'flights', cfg, rules, now=at(m))]
               for c, m in [(DRIFT_BAD, 0), (DRIFT_BAD, 1440), (Check('drift:share', 'SUCCESS', 0.1), 2880),
                            (DRIFT_BAD, 4320), (DRIFT_BAD, 5760), (DRIFT_BAD, 7200)]]
    assert actions == [['pending'], ['pending'], [], ['pending'], ['pending'], ['fired']]
    assert (len(hook.bodies), len(smtp.messages)) == (1, 1)
    assert hook.bodies[0]['count'] == 1


_CHILD = '''
import sys, datetime as dt
from mlprod.config import parse_config
from mlprod.alerts import evaluate
from mlprod.core import Check
from pathlib import Path
root = Path(sys.argv[1])
cfg = parse_config((root / 'mlprod.toml').read_text(), root=root, env={})
now = dt.datetime.fromisoformat(sys.argv[2])
ev = evaluate([Check('service:latency_p95', 'FAIL', 82.0, '<= 50')], 'flights', cfg, now=now)
print(ev[0].action)
'''


def test_dedup_across_processes(project, hook, smtp):
    "State is in the database: separate jobs, even at the same moment, send one alert."
    cfg = make_project(project, hook.url, smtp.port)
    env = offline_env(NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost')
    run = lambda m: subprocess.Popen([sys.executable, '-c', _CHILD, str(project), at(m).isoformat()],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [p.communicate(timeout=120) for p in [run(0) for _ in range(4)]]
    actions = sorted(out.strip() for out, err in results)
    assert actions == ['fired', 'suppressed', 'suppressed', 'suppressed'], results
    later = run(20).communicate(timeout=120)[0].strip()
    assert later == 'suppressed'
    assert (len(hook.bodies), len(smtp.messages)) == (1, 1)
    h = alert_history(cfg=cfg)
    assert [(a.state, a.count) for a in h] == [('open', 5)]


def test_failing_webhook_is_retried_recorded_and_never_crashes(project, smtp, monkeypatch):
    down = Hook(status=500)
    try:
        cfg = make_project(project, down.url, smtp.port)
        t = time.perf_counter()
        ev = evaluate([LATENCY_BAD, Check('service:error_rate', 'ERROR', None, '≤ 0.01', 'no requests')], 'flights', cfg, now=at(0))
        took = time.perf_counter() - t
        assert [e.action for e in ev] == ['fired', 'fired']
        assert down.hits == 3  # 3 tries for the first notice, none for the second (same call)
        slack = [d for e in ev for d in e.deliveries if d.channel == 'slack']
        assert [(d.ok, d.attempts) for d in slack] == [(False, 3), (False, 0)]
        assert 'HTTP 500' in slack[0].error and 'internal error' in slack[0].error
        assert 0.6 <= took < 3, took  # backoff 0.2 s + 0.4 s, bounded
        # the other channels still got both alerts
        assert (len(file_lines(cfg)), len(smtp.messages)) == (2, 2)
        recorded = delivery_history(cfg, channel='slack')
        assert sorted((d.ok, d.attempts) for d in recorded) == [(False, 0), (False, 3)]
        # fire and resolve (a failed job) do not raise either
        e = fire('flights/job:monitor', 'critical', 'monitor job failed', model='flights', cfg=cfg, now=at(1))
        assert e.action == 'fired' and not e.deliveries[1].ok and e.deliveries[2].ok
        down.status = 200  # the receiver is back: the resolve notice goes through
        e = resolve('flights/job:monitor', 'monitor job succeeded', cfg=cfg, now=at(2))
        assert [d.ok for d in e.deliveries] == [True, True, True] and down.bodies[-1]['kind'] == 'resolved'
    finally:
        down.close()


def test_slow_webhook_and_dead_smtp_are_bounded(project):
    slow = Hook(delay=2.0)
    try:
        cfg = make_project(project, slow.url, free_port())
        t = time.perf_counter()
        ev = evaluate([LATENCY_BAD], 'flights', cfg, now=at(0), retry=RetryPolicy(tries=2, backoff_s=0.05, timeout_s=0.3))
        took = time.perf_counter() - t
        d = {x.channel: x for x in ev[0].deliveries}
        assert d['file'].ok and not d['slack'].ok and not d['oncall'].ok
        assert 'Timeout' in d['slack'].error and 'Connection refused' in d['oncall'].error, (d['slack'].error, d['oncall'].error)
        assert took < 2.0, took
    finally:
        slow.close()


def _cli(monkeypatch, capsys, *argv):
    import mlprod.cli as cli
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_alerts_test_and_list(project, hook, smtp, monkeypatch, capsys):
    cfg = make_project(project, hook.url, smtp.port)
    rc, out, err = _cli(monkeypatch, capsys, '--project', str(project), 'alerts', 'test')
    assert rc == 0, (out, err)
    lines = out.splitlines()
    assert [l.split()[:2] for l in lines] == [['ok', 'file:'], ['ok', 'slack:'], ['ok', 'oncall:']], out
    assert hook.bodies[-1]['kind'] == 'test' and smtp.messages[-1][1]['Subject'] == '[TEST] mlprod alert channel test'
    assert file_lines(cfg)[-1]['kind'] == 'test'
    tests = delivery_history(cfg, kind='test', since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
    assert sorted((d.channel, d.ok) for d in tests) == [('file', True), ('oncall', True), ('slack', True)]
    assert alerts.channel_test_check(cfg).status == Status.SUCCESS  # what a readiness check asks

    hook.status = 500
    monkeypatch.setattr(alerts, 'DEFAULT_RETRY', RetryPolicy(tries=2, backoff_s=0.01))
    rc, out, err = _cli(monkeypatch, capsys, '--project', str(project), 'alerts', 'test', '--json')
    assert rc == 1
    r = json.loads(out)
    assert [(c['name'], c['status']) for c in r['checks']] == [('channel:file', 'SUCCESS'), ('channel:slack', 'FAIL'),
                                                              ('channel:oncall', 'SUCCESS')]

    evaluate([LATENCY_BAD, DRIFT_BAD], 'flights', cfg, now=at(0))
    evaluate([LATENCY_OK], 'flights', cfg, now=at(5))
    rc, out, _ = _cli(monkeypatch, capsys, '--project', str(project), 'alerts', '--open', '--json')
    assert rc == 0 and [a['key'] for a in json.loads(out)['alerts']] == ['flights/drift:share']
    rc, out, _ = _cli(monkeypatch, capsys, '--project', str(project), 'alerts', '--model', 'flights')
    assert rc == 0 and 'flights/drift:share: 9 of 15 columns drifted' in out and 'resolved' in out, out
    rc, out, err = _cli(monkeypatch, capsys, '--project', str(project), 'alerts', 'resolve', 'flights/nope')
    assert rc == 2 and "alert key: got 'flights/nope'" in err
