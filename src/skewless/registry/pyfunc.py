"""The bundle as an MLflow pyfunc model: one artifact, the skewless code beside it, and exact
requirements, so ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` predicts anywhere.
Skewless itself reads the bundle straight from a logged model's folder (``logged_bundle``).

Plain-MLflow users pass rows as their source has them: the config's own timestamp column, with
ISO 8601 text or (time-zone-aware) times, read exactly as ingestion reads them (naive times in
``data.timezone``). Rows in ingestion format (``event_timestamp``, naive meaning UTC) work too.
"""

from __future__ import annotations

import pickle
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import AnyType, ColSpec, Schema

import skewless
from skewless.bundle.bundle import ForecastBundle
from skewless.core.config import SkewlessConfig
from skewless.core.errors import BundleError, DataValidationError
from skewless.core.schema import EVENT_TS
from skewless.features.validation import ENTITY_ROW, Findings, parse_rows

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
        self.config = trained_config(self.bundle)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return naive_utc(self.bundle.predict(ingestion_rows(model_input, self.config)))


def trained_config(bundle: ForecastBundle) -> SkewlessConfig:
    """The config the bundle was trained with (kept in its metadata)."""
    return SkewlessConfig.model_validate(bundle.metadata["config"])


def ingestion_rows(rows: pd.DataFrame, config: SkewlessConfig) -> pd.DataFrame:
    """Rows in the bundle's ingestion format: source rows (the config's timestamp column) are
    parsed by ingestion's own parser; rows that have ``event_timestamp`` pass as they are."""
    if EVENT_TS in rows.columns or config.data.timestamp_column not in rows.columns:
        return rows
    findings = Findings()
    parsed = parse_rows(rows.reset_index(drop=True), config, findings)
    if findings.errors:
        raise DataValidationError("forecast input cannot be read", findings.errors)
    return parsed.drop(columns=ENTITY_ROW)


def signature(bundle: ForecastBundle, example: pd.DataFrame) -> ModelSignature:
    """The example's signature, with either timestamp column accepted in any form: MLflow's
    ``datetime`` type would refuse ISO text and time-zone-aware times before ``predict``."""
    inferred = infer_signature(example, naive_utc(bundle.predict(example)))
    times = {EVENT_TS, trained_config(bundle).data.timestamp_column}
    columns = [c for c in inferred.inputs.inputs if c.name not in times]
    columns += [ColSpec(AnyType(), name, required=False) for name in sorted(times)]
    return ModelSignature(inputs=Schema(columns), outputs=inferred.outputs)


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

    The example's timestamps cross the MLflow boundary as naive UTC, which the bundle reads as
    UTC.
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
            signature=signature(bundle, input_example),
            input_example=input_example,
            registered_model_name=registered_name,
        )
