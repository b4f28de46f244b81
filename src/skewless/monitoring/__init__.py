"""The closed loop: drift, accuracy, alerts, retraining and the report, over the request log."""
