"""MLflow: the bundle as a pyfunc model, registered versions, and their aliases."""
