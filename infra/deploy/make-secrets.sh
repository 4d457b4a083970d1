#!/bin/sh
# Create every secret compose.yaml names, once, mode 0600, under DIR (default infra/deploy/secrets), as root.
# Existing files are kept. Brokers get a self-signed TLS certificate for their service name: replace it with
# one from your CA and put that CA in the workers' configuration document.
# Compose bind-mounts each secret file with its owner and mode as they are here (it ignores uid/gid/mode for file
# secrets), and the brokers and Airflow run as the images' user, uid 10001: the files are given to that user.
set -eu
dir=${1:-$(dirname "$0")/secrets}
image_uid=10001
[ "$(id -u)" = 0 ] || { echo "make-secrets.sh: run it as root (sudo): it gives the files to uid $image_uid, the" \
  "images' user, which must read them inside the containers" >&2; exit 1; }
umask 077
mkdir -p "$dir/owner" "$dir/provider"
rand() { python3 -c "import secrets; print(secrets.token_urlsafe(32))"; }
put() { [ -s "$1" ] || printf '%s\n' "$2" > "$1"; }
put "$dir/postgres_password" "$(rand)"
put "$dir/redis_password" "$(rand)"
pg=$(cat "$dir/postgres_password")
redis=$(cat "$dir/redis_password")
put "$dir/airflow_db_url" "postgresql+psycopg://airflow:$pg@postgres:5432/airflow"
put "$dir/airflow_db_url_async" "postgresql+psycopg_async://airflow:$pg@postgres:5432/airflow"
put "$dir/airflow_celery_broker_url" "redis://:$redis@redis:6379/5"
put "$dir/airflow_celery_result_backend" "db+postgresql+psycopg://airflow:$pg@postgres:5432/airflow"
put "$dir/airflow_fernet_key" "$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')"
put "$dir/airflow_api_secret_key" "$(rand)"
put "$dir/airflow_jwt_secret" "$(rand)"
for party in owner provider; do
  put "$dir/$party/kek.hex" "$(python3 -c 'import os; print(os.urandom(32).hex())')"
  put "$dir/$party/admin-token" "$(rand)"
  put "$dir/$party/metrics-token" "$(rand)"
  [ -s "$dir/$party/tls.key" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=$party-broker" -addext "subjectAltName=DNS:$party-broker,DNS:localhost" \
    -keyout "$dir/$party/tls.key" -out "$dir/$party/tls.pem" 2>/dev/null
done
find "$dir" -type f -exec chown "$image_uid:$image_uid" {} +
echo "secrets in $dir, mode 0600, owned by uid $image_uid"
