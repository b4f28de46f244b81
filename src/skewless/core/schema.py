"""Names every layer shares: the columns of stored rows and the Feast view of the raw variables.

They live here, below the feature store, so that preprocessing, the bundle, serving and
monitoring can name a timestamp without importing the feature layer.
"""

EVENT_TS = "event_timestamp"
CREATED_TS = "created_timestamp"  # when a row was ingested: incremental materialize reads it
SERIES_VIEW = "series"  # the Feast feature view of the raw variables
