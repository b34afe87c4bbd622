"""A throwaway PostgreSQL server for tests (Debian's packages), an `mlflow server` process on it, and `free_port`.

The `postgres` fixture of conftest.py starts one server per test session (per xdist worker):

    def test_x(postgres): url = postgres.create_database('x')

PostgreSQL itself is installed by `make system-deps` (run by `make test`), never by test code: when `initdb` is
missing, `start_postgres` raises an error that names that target. The server runs as the `postgres` user (when we
are root) with `initdb -A trust` in a temporary folder owned by it, on a free loopback port. Every process started
here is stopped by `.stop()`, which also kills the process group (MLflow's `huey_consumer` children included).
"""
import glob, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

__all__ = ['free_port', 'pg_bin', 'MISSING_POSTGRES', 'Postgres', 'start_postgres', 'MlflowServer', 'start_mlflow_server']

MISSING_POSTGRES = "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin): run `make system-deps` (as root)"


def free_port() -> int:
    "A loopback TCP port nobody listens on right now (the one helper every test uses for ports)."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def pg_bin() -> Path | None:
    "The folder of initdb/pg_ctl of the newest installed PostgreSQL, or None."
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found: return Path(found[-1]).parent
    initdb = shutil.which('initdb')
    return Path(initdb).parent if initdb else None


def _as_postgres(cmd: list) -> list:
    "Run `cmd` as the postgres user when we are root (initdb refuses root)."
    return ['runuser', '-u', 'postgres', '--', *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    "A running PostgreSQL cluster in a temporary folder."
    def __init__(self, bin_dir: Path, data_dir: Path, port: int, user: str = 'mlprod'):
        self.bin, self.data, self.port, self.user = bin_dir, data_dir, port, user

    def url(self, db: str = 'postgres') -> str:
        "SQLAlchemy URL of database `db` (psycopg2 named: SQLAlchemy 2.1 and MLflow default to psycopg 3, not installed)."
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        "Create database `name` (if missing) and return its URL."
        import psycopg2
        conn = psycopg2.connect(host='127.0.0.1', port=self.port, user=self.user, dbname='postgres')
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute('SELECT 1 FROM pg_database WHERE datname = %s', (name,))
            if cur.fetchone() is None: cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self):
        "Stop the server and remove its folder."
        subprocess.run(_as_postgres([str(self.bin/'pg_ctl'), '-D', str(self.data), '-m', 'immediate', '-w', 'stop']),
                       capture_output=True, timeout=60)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_postgres(user: str = 'mlprod') -> Postgres:
    "initdb into a temporary folder and start PostgreSQL on a free port (≈ 2 s); it must be installed (`make system-deps`)."
    b = pg_bin()
    if b is None: raise RuntimeError(MISSING_POSTGRES)
    root = Path(tempfile.mkdtemp(prefix='mlprod-pg-'))
    data = root/'data'
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, 'postgres', 'postgres'); shutil.chown(data, 'postgres', 'postgres')
        os.chmod(root, 0o755)
    subprocess.run(_as_postgres([str(b/'initdb'), '-D', str(data), '-A', 'trust', '-U', user, '--no-sync', '-E', 'UTF8']),
                   check=True, capture_output=True, timeout=120)
    for attempt in range(3):
        port = free_port()
        r = subprocess.run(_as_postgres([str(b/'pg_ctl'), '-D', str(data), '-l', str(data/'server.log'), '-w', '-t', '60', '-o',
                                         f"-k {data} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off -c full_page_writes=off "
                                         "-c synchronous_commit=off -c max_connections=100", 'start']),
                           capture_output=True, text=True, timeout=90)
        if r.returncode == 0: return Postgres(b, data, port, user)
    log = (data/'server.log').read_text() if (data/'server.log').exists() else r.stderr
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start: {log[-2000:]}")


class MlflowServer:
    "A running `mlflow server` process (its own process group)."
    def __init__(self, proc: subprocess.Popen, url: str, artifacts: Path, log_path: Path):
        self.proc, self.url, self.artifacts, self.log_path = proc, url, artifacts, log_path

    def stop(self):
        "Stop the server and every child (uvicorn workers, huey_consumer)."
        if self.proc.poll() is None:
            try: os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError: pass
            try: self.proc.wait(3)
            except subprocess.TimeoutExpired: pass
        try: os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers in the group
        except ProcessLookupError: pass
        try: self.proc.wait(5)
        except subprocess.TimeoutExpired: pass
        shutil.rmtree(self.artifacts.parent, ignore_errors=True)


def start_mlflow_server(backend_uri: str, timeout: float = 120) -> MlflowServer:
    "Start `mlflow server` on a free loopback port with `backend_uri` and temporary artifacts; wait until it answers."
    root = Path(tempfile.mkdtemp(prefix='mlprod-mlflow-'))
    art, log_path = root/'artifacts', root/'server.log'
    art.mkdir()
    port = free_port()
    env = {**os.environ, 'MLFLOW_SERVER_ENABLE_JOB_EXECUTION': 'false', 'MLFLOW_DISABLE_TELEMETRY': 'true', 'DO_NOT_TRACK': 'true'}
    for k in ('MLFLOW_TRACKING_URI', 'HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY'): env.pop(k, None)
    mlflow_exe = Path(sys.executable).parent/'mlflow'
    if backend_uri.startswith("postgresql://"): backend_uri = "postgresql+psycopg2://" + backend_uri[len("postgresql://"):]  # MLflow would pick psycopg 3
    cmd = [str(mlflow_exe), 'server', '--backend-store-uri', backend_uri, '--artifacts-destination', str(art),
           '--host', '127.0.0.1', '--port', str(port), '--workers', '1']
    logf = open(log_path, 'wb')
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=root)
    srv = MlflowServer(proc, f"http://127.0.0.1:{port}", art, log_path)
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if proc.poll() is not None: break
        try:
            with opener.open(f"{srv.url}/health", timeout=2) as r:
                if r.status == 200: return srv
        except OSError: pass
        time.sleep(0.3)
    out = log_path.read_text(errors='replace')[-3000:]
    srv.stop()
    raise RuntimeError(f"mlflow server did not start in {timeout:.0f} s: {out}")
