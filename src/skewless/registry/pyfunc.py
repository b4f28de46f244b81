"""The bundle as an MLflow pyfunc model: one artifact, the skewless code beside it, and exact
requirements, so ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` predicts anywhere.
Skewless itself reads the bundle straight from a logged model's folder (``logged_bundle``)."""

from __future__ import annotations

import pickle
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel

import skewless
from skewless.bundle.bundle import ForecastBundle
from skewless.core.errors import BundleError
from skewless.core.schema import EVENT_TS

ARTIFACT = "bundle"
_FILE = "bundle.pkl"
# What unpickling and predicting import; torch because the models module imports it.
_REQUIREMENTS = (
    "mlflow",
    "numpy",
    "pandas",
    "pyarrow",
    "pydantic",
    "PyYAML",
    "torch",
    "xgboost-cpu",
)


class BundleModel(PythonModel):
    """Loads the pickled bundle from the model's artifacts and forwards ``predict`` to it."""

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts.get(ARTIFACT, "")))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return naive_utc(self.bundle.predict(model_input))


def naive_utc(frame: pd.DataFrame) -> pd.DataFrame:
    """MLflow schemas hold only time-zone-naive datetimes: UTC without its zone."""
    return frame.assign(**{EVENT_TS: frame[EVENT_TS].dt.tz_convert("UTC").dt.tz_localize(None)})


def logged_bundle(folder: Path) -> ForecastBundle:
    """The bundle in a logged model's folder, unpickled without loading the pyfunc model (which
    would also put the model's copy of skewless first on sys.path)."""
    try:
        stored = Model.load(folder).flavors["python_function"]["artifacts"][ARTIFACT]["path"]
    except (MlflowException, OSError, KeyError) as exc:
        raise BundleError(f"{folder} holds no logged forecast bundle: {exc!r}") from exc
    return load_bundle(folder / stored)


def load_bundle(path: Path) -> ForecastBundle:
    """The bundle stored at ``path``, or an error that says what is missing or broken."""
    if not path.is_file():
        raise BundleError(f"the model artifact is incomplete: '{_FILE}' is missing ({path})")
    try:
        bundle = pickle.loads(path.read_bytes())
    except Exception as exc:  # any unpickling failure means the same thing to the user
        raise BundleError(f"the model artifact {path} is corrupt: {exc}") from exc
    if not isinstance(bundle, ForecastBundle):
        raise BundleError(f"{path} holds a {type(bundle).__name__}, not a ForecastBundle")
    missing = [
        part
        for part in ("spec", "preprocessor", "model", "intervals")
        if getattr(bundle, part, None) is None
    ]
    if missing:
        raise BundleError(f"the forecast bundle in {path} lacks {missing}")
    return bundle


def requirements() -> list[str]:
    """Exact pins of what the model needs, as installed where it was trained."""
    return [f"{name}=={version(name)}" for name in _REQUIREMENTS]


def log_bundle(
    bundle: ForecastBundle, input_example: pd.DataFrame, registered_name: str | None = None
) -> ModelInfo:
    """Log ``bundle`` to the active run as one pyfunc model, optionally registering a version.

    Timestamps cross the MLflow boundary as naive UTC, which the bundle reads as UTC.
    """
    input_example = naive_utc(input_example)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / _FILE
        path.write_bytes(pickle.dumps(bundle))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=BundleModel(),
            artifacts={ARTIFACT: str(path)},
            code_paths=[str(Path(skewless.__file__).parent)],
            pip_requirements=requirements(),
            signature=infer_signature(input_example, naive_utc(bundle.predict(input_example))),
            input_example=input_example,
            registered_model_name=registered_name,
        )
