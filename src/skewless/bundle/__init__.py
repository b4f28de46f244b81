"""The forecast bundle: everything a forecast needs, deployed as one MLflow model version."""
