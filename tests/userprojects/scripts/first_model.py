"""Train the first model with the project's own recipe and register it from Python, as a user does in a notebook.

    python first_model.py START END                # zero-config: `register` writes [models.NAME] into mlprod.toml
    python first_model.py START END --configured   # mlprod.toml already has a hand-written [models.NAME] section
"""
import sys
import my_src
from mlprod import registry

start, end = sys.argv[1], sys.argv[2]
df = my_src.load(start, end)
model = my_src.train(df)
if '--configured' in sys.argv[3:]:
    v = registry.register(model, my_src.NAME, df, recipe='my_src:train')
else:
    # zero-config: task, features, categoricals and the positive class are inferred from the fitted model and `df`;
    # the data source and recipe named here are written into the section, for retraining and the scheduled jobs
    v = registry.register(model, my_src.NAME, df, target=my_src.TARGET, time_column=my_src.TIME_COLUMN,
                          data_source='my_src:load', recipe='my_src:train')
print(v.version)
