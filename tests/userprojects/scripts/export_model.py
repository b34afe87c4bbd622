"""Train a model on [START, END) and save it as an MLflow model folder with its training rows, for `mlprod register`.

    python export_model.py START END OUT   # writes OUT/model (mlflow.sklearn) and OUT/train.parquet
"""
import sys
from pathlib import Path
import mlflow
import my_src

start, end, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
df = my_src.load(start, end)
model = my_src.train(df)
out.mkdir(parents=True, exist_ok=True)
mlflow.sklearn.save_model(model, str(out / 'model'), serialization_format='pickle', pip_requirements=['scikit-learn'])
df.to_parquet(out / 'train.parquet', index=False)
print(out / 'model')
