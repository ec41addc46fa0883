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

{{/*
Access. "true" when gRPC callers are authenticated: bearer tokens (auth.authJwksUrl) or client
certificates (tls.grpc.clientCaSecretName, which needs tls.grpc.enabled).
*/}}
{{- define "temporal-codec.grpcAuthenticated" -}}
{{- if or .Values.auth.authJwksUrl (and .Values.tls.grpc.enabled .Values.tls.grpc.clientCaSecretName) }}true{{ end }}
{{- end }}

{{/*
"true" when gRPC listens on the pod IP (GRPC_HOST 0.0.0.0) and is on the Service: its callers are
authenticated or allowUnauthenticated says so, and service.exposeGrpc. Otherwise 127.0.0.1 only (the
server refuses to start on 0.0.0.0 without authentication).
*/}}
{{- define "temporal-codec.grpcOpen" -}}
{{- if and .Values.service.exposeGrpc (or (include "temporal-codec.grpcAuthenticated" .) .Values.allowUnauthenticated) }}true{{ end }}
{{- end }}

{{/*
"true" when the gateway is enabled and listens on the pod IP (GATEWAY_HOST 0.0.0.0), on the Service:
its callers are authenticated (auth.authJwksUrl) or allowUnauthenticated says so.
*/}}
{{- define "temporal-codec.gatewayOpen" -}}
{{- if and .Values.gateway.enabled (or .Values.auth.authJwksUrl .Values.allowUnauthenticated) }}true{{ end }}
{{- end }}

{{/* A listen address: 0.0.0.0 when the argument is "true", else 127.0.0.1. */}}
{{- define "temporal-codec.host" -}}
{{- eq . "true" | ternary "0.0.0.0" "127.0.0.1" }}
{{- end }}

{{/* "true" when an authorization policy is mounted (AUTHZ_POLICY_FILE). */}}
{{- define "temporal-codec.hasPolicy" -}}
{{- if or .Values.authorization.policy .Values.authorization.existingConfigMap }}true{{ end }}
{{- end }}

{{- define "temporal-codec.policyConfigMap" -}}
{{- .Values.authorization.existingConfigMap | default (printf "%s-authz" (include "temporal-codec.fullname" .)) }}
{{- end }}

{{/*
Environment every container that serves Encode/Decode gets: ALLOW_UNAUTHENTICATED, the policy file,
the token settings (auth.*). The gateway sidecar passes the caller's token on to gRPC, so the server
must verify it with the same settings.
*/}}
{{- define "temporal-codec.accessEnv" -}}
{{- if .Values.allowUnauthenticated }}
- name: ALLOW_UNAUTHENTICATED  # allowUnauthenticated: anyone who reaches the open ports may decrypt
  value: "true"
{{- end }}
{{- if eq (include "temporal-codec.hasPolicy" .) "true" }}
- name: AUTHZ_POLICY_FILE
  value: /etc/codec/authz/policy.yaml
{{- end }}
{{- include "temporal-codec.settingsEnv" .Values.auth }}
{{- end }}

{{/* METRICS_BEARER_TOKEN_FILE when metrics.bearerTokenSecretName is set. */}}
{{- define "temporal-codec.metricsTokenEnv" -}}
{{- if .Values.metrics.bearerTokenSecretName }}
- name: METRICS_BEARER_TOKEN_FILE
  value: /etc/codec/metrics-token/token
{{- end }}
{{- end }}

{{/*
Values the chart refuses with a message: the token settings moved from gateway.settings to auth
(they protect gRPC as well now); an inline policy and an existing ConfigMap at once.
*/}}
{{- define "temporal-codec.validate" -}}
{{- range $key := list "authJwksUrl" "authIssuer" "authAudience" "authNamespacesClaim" "authJwksRefreshInterval" }}
{{- if ne (toString (index $.Values.gateway.settings $key | default "")) "" }}
{{- fail (printf "gateway.settings.%s moved to auth.%s: the token settings protect gRPC as well as the gateway now" $key $key) }}
{{- end }}
{{- end }}
{{- if and .Values.authorization.policy .Values.authorization.existingConfigMap }}
{{- fail "authorization.policy and authorization.existingConfigMap: set one of them" }}
{{- end }}
{{- end }}

