{{/* Names and labels, as `helm create` makes them. */}}
{{- define "temporal-codec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "temporal-codec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "temporal-codec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "temporal-codec.labels" -}}
helm.sh/chart: {{ include "temporal-codec.chart" . }}
{{ include "temporal-codec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "temporal-codec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "temporal-codec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "temporal-codec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "temporal-codec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "temporal-codec.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Environment from a map of camelCase settings: kmsKeyAlias -> KMS_KEY_ALIAS. Empty values are
skipped (the program's default applies); maps become "key=value,key=value" (NAMESPACE_KEY_ALIASES).
*/}}
{{- define "temporal-codec.settingsEnv" -}}
{{- range $key, $value := . }}
{{- if kindIs "map" $value }}
{{- if $value }}
{{- $pairs := list }}
{{- range $k, $v := $value }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}
- name: {{ $key | snakecase | upper }}
  value: {{ join "," $pairs | quote }}
{{- end }}
{{- else if ne (toString $value) "" }}
{{- $text := toString $value }}
{{- /* YAML numbers arrive as float64: 10000000 would print as 1e+07 */}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $text = printf "%d" (int64 $value) }}
{{- end }}
- name: {{ $key | snakecase | upper }}
  value: {{ $text | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "temporal-codec.gatewayTlsSecret" -}}
{{- default .Values.tls.grpc.secretName .Values.tls.gateway.secretName }}
{{- end }}

{{/*
Where the HTTP gateway runs: "sidecar" (its own container), "inProcess" (inside the codec server's
process, server.py's GATEWAY_ENABLED), or "" when gateway.enabled is false.
*/}}
{{- define "temporal-codec.gatewayMode" -}}
{{- if .Values.gateway.enabled }}{{ .Values.gateway.mode }}{{ end }}
{{- end }}

{{/*
"true" when the gateway serves HTTPS: with tls.gateway.enabled, and in-process also with
tls.grpc.enabled alone, since server.py's gateway then serves the gRPC certificate.
*/}}
{{- define "temporal-codec.gatewayHttps" -}}
{{- if or .Values.tls.gateway.enabled (and (eq .Values.gateway.mode "inProcess") .Values.tls.grpc.enabled) }}true{{ end }}
{{- end }}

{{/*
A preStop sleep of preStopSleepSeconds (nothing when 0): the pod leaves the Service's endpoints while
it still serves, before SIGTERM starts the drain.
*/}}
{{- define "temporal-codec.preStop" -}}
{{- if .Values.preStopSleepSeconds -}}
lifecycle:
  preStop:
    exec:
      command: ["sleep", {{ .Values.preStopSleepSeconds | quote }}]
{{- end }}
{{- end }}
