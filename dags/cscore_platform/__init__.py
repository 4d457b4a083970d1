"""The platform's side of cscore: what Airflow runs. Sees ciphertext, keys of objects, digests and
counts; never an email, a score, a data key or model weights. Talks to workers by task name only."""
