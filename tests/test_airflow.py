"""The exported Airflow DAG runs a real job notebook with `PapermillOperator` under Airflow 3 (`dag.test()`).

Airflow is heavy, so it lives in its own virtual environment, built once and cached under
`~/.cache/mlprod-airflow-venv/<key>` (the key changes when the pinned requirements change)."""
import hashlib, json, os, shutil, subprocess, sys, time, venv
from pathlib import Path
import pytest

AIRFLOW_REQUIREMENTS = ['apache-airflow>=3.0,<4', 'apache-airflow-providers-papermill>=3.8', 'ipykernel>=6.29']
KEY = hashlib.sha256(json.dumps([sys.version_info[:2], AIRFLOW_REQUIREMENTS]).encode()).hexdigest()[:12]
CACHE = Path(os.environ.get('MLPROD_AIRFLOW_VENV', Path.home()/'.cache'/'mlprod-airflow-venv'/KEY))


def airflow_venv() -> Path:
    "The cached Airflow venv, created on first use (minutes); returns its python."
    py = CACHE/'bin'/'python'
    if (CACHE/'.complete').exists(): return py
    if CACHE.exists(): shutil.rmtree(CACHE)
    t0 = time.time()
    venv.EnvBuilder(with_pip=True).create(CACHE)
    subprocess.run([str(py), '-m', 'pip', 'install', '-q', '--upgrade', 'pip>=24'], check=True)
    subprocess.run([str(py), '-m', 'pip', 'install', '-q', *AIRFLOW_REQUIREMENTS], check=True)
    (CACHE/'.complete').write_text(f"installed in {time.time()-t0:.0f} s\n")
    return py


if __name__ == '__main__':
    print(airflow_venv(), (CACHE/'.complete').read_text())


from conftest import BIN, offline_env

DAG_TEST = r'''
import runpy, sys, time
t0 = time.perf_counter()
ns = runpy.run_path(sys.argv[1])
dag = ns['dag']
dr = dag.test()
print('DAG_STATE', dr.state, 'TASKS', sorted((ti.task_id, str(ti.state)) for ti in dr.get_task_instances()), f'{time.perf_counter()-t0:.1f}s')
'''


@pytest.mark.timeout(1800)
def test_exported_dag_runs_the_job_notebook(tmp_path):
    from mlprod.config import DEFAULT_TOML, parse_config
    from mlprod.schedule import export_airflow
    t0 = time.perf_counter()
    py = airflow_venv()
    install_s = time.perf_counter() - t0
    # a project whose only schedule is the smoke job
    toml = DEFAULT_TOML.replace('monitor = "0 6 * * *"\nretrain = "0 3 1 * *"', 'smoke = "0 6 * * *"')
    assert 'smoke = ' in toml
    (tmp_path/'mlprod.toml').write_text(toml)
    cfg = parse_config(toml, root=tmp_path, env={})
    # a kernel that has mlprod (this venv's python), findable from Airflow's venv through JUPYTER_PATH
    kdir = tmp_path/'jupyter'/'kernels'/'mlprod-test'; kdir.mkdir(parents=True)
    (kdir/'kernel.json').write_text(json.dumps({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                                               'display_name': 'mlprod (test)', 'language': 'python'}))
    dags = tmp_path/'dags'
    files = export_airflow(cfg, dags, kernel='mlprod-test')
    assert [f.name for f in files] == ['mlprod_flights_smoke.py']
    home = tmp_path/'airflow'; home.mkdir()
    env = offline_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(dags), AIRFLOW__CORE__LOAD_EXAMPLES='False',
                      AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home/'airflow.db'}", JUPYTER_PATH=str(tmp_path/'jupyter'),
                      PYDEVD_DISABLE_FILE_VALIDATION='1', NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost')
    t1 = time.perf_counter()
    r = subprocess.run([str(py), '-m', 'airflow', 'db', 'migrate'], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    migrate_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    r = subprocess.run([str(py), '-c', DAG_TEST, str(files[0])], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    test_s = time.perf_counter() - t2
    assert 'DAG_STATE success' in r.stdout, r.stdout[-4000:] + r.stderr[-4000:]
    executed = list((tmp_path/'.mlprod'/'runs'/'airflow'/'flights'/'smoke').glob('*.ipynb'))
    assert len(executed) == 1
    nb = json.loads(executed[0].read_text())
    out = ''.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []))
    assert 'message: hello' in out
    print(f"\nairflow venv {'created' if install_s > 5 else 'cached'} ({install_s:.0f} s; {(CACHE/'.complete').read_text().strip()}), "
          f"db migrate {migrate_s:.0f} s, dag.test() {test_s:.0f} s")
