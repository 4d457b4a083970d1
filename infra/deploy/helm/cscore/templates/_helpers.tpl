{{/* Labels shared by every object of this chart. */}}
{{- define "cscore.labels" -}}
app.kubernetes.io/part-of: cscore
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The broker's config.json: the party's `config` values plus the paths and address the chart fixes. The key
store: SQLite on the broker's volume, or with `postgres.enabled` PostgreSQL, its URL (password included) read from
the Secret's file `db-url` (`db_url_path`): never in this ConfigMap. */}}
{{- define "cscore.brokerConfig" -}}
{{- $party := index . 0 -}}
{{- $b := index . 1 -}}
{{- $fixed := dict "name" $party "host" "0.0.0.0" "port" $b.port "kek_path" "/run/secrets/cscore/kek.hex" "admin_token_path" "/run/secrets/cscore/admin-token" "metrics_token_path" "/run/secrets/cscore/metrics-token" "tls_cert_path" "/run/secrets/cscore/tls.pem" "tls_key_path" "/run/secrets/cscore/tls.key" -}}
{{- $sqlite := dict "db_path" "/var/lib/cscore-broker/keys.sqlite" -}}
{{- $postgres := dict "db_url_path" "/run/secrets/cscore/db-url" -}}
{{- if hasKey $b.config "db_url" }}{{ fail (printf "brokers.%s.config.db_url would put the database password in a ConfigMap: set brokers.%s.postgres.enabled and the Secret's key db-url instead" $party $party) }}{{ end -}}
{{- toJson (merge $fixed (ternary $postgres $sqlite $b.postgres.enabled) $b.config) -}}
{{- end }}
