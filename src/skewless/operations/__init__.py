"""Scheduled jobs: ingest, materialize, compact, monitor (and retrain) on cron expressions."""
