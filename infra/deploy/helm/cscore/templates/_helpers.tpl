{{/* Labels shared by every object of this chart. */}}
{{- define "cscore.labels" -}}
app.kubernetes.io/part-of: cscore
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The broker's config.json: the party's `config` values plus the paths and address the chart fixes. */}}
{{- define "cscore.brokerConfig" -}}
{{- $party := index . 0 -}}
{{- $b := index . 1 -}}
{{- $fixed := dict "name" $party "host" "0.0.0.0" "port" $b.port "db_path" "/var/lib/cscore-broker/keys.sqlite" "kek_path" "/run/secrets/cscore/kek.hex" "admin_token_path" "/run/secrets/cscore/admin-token" "metrics_token_path" "/run/secrets/cscore/metrics-token" "tls_cert_path" "/run/secrets/cscore/tls.pem" "tls_key_path" "/run/secrets/cscore/tls.key" -}}
{{- toJson (merge $fixed $b.config) -}}
{{- end }}
