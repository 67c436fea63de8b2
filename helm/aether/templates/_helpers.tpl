{{/* Names ---------------------------------------------------------------------------------------------- */}}

{{- define "aether.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aether.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aether.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: call with (dict "root" $ "component" "web") */}}
{{- define "aether.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aether.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "aether.labels" -}}
helm.sh/chart: {{ include "aether.chart" .root }}
{{ include "aether.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: aether
{{- end -}}

{{- define "aether.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "aether.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aether.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name the existing service account (serviceAccount.create is false)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "aether.secretName" -}}
{{- if .Values.secrets.create -}}
{{- printf "%s-secrets" (include "aether.fullname" .) -}}
{{- else -}}
{{- required "secrets.existingSecret: name the Secret holding SECRET_KEY, DATABASE_URL, REDIS_URL and METRICS_TOKEN, or set secrets.create=true with secrets.values" .Values.secrets.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "aether.modelsClaimName" -}}
{{- default (printf "%s-models" (include "aether.fullname" .)) .Values.persistence.models.existingClaim -}}
{{- end -}}

{{/* A worker pool's name as a DNS label: trading, market-data, learning. */}}
{{- define "aether.poolName" -}}
{{- . | lower | replace "_" "-" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Checks ------------------------------------------------------------------------------------------- */}}

{{/* Settings that are secret: never in the ConfigMap. */}}
{{- define "aether.secretSettingNames" -}}
SECRET_KEY DATABASE_URL REDIS_URL METRICS_TOKEN CELERY_BROKER_URL COINGECKO_API_KEY KRAKEN_CREDENTIALS_KEY
{{- end -}}

{{/* Settings the chart owns: not overridable through config.extra. */}}
{{- define "aether.chartOwnedNames" -}}
AETHER_ENV AETHER_CREDENTIAL_STORE AETHER_K8S_NAMESPACE AETHER_K8S_KUBECONFIG KRAKEN_CREDENTIALS_DIR ALLOWED_HOSTS CSRF_TRUSTED_ORIGINS AETHER_BEHIND_TLS_PROXY LOG_LEVEL AETHER_PAIRS AETHER_TIMEFRAME STATIC_ROOT LEARNING_ARTIFACT_ROOT MARKET_FEED_METRICS_PORT
{{- end -}}

{{/* Fails rendering, with a message naming the value, on a configuration that could never run safely. */}}
{{- define "aether.validate" -}}
{{- $secretNames := splitList " " (include "aether.secretSettingNames" .) -}}
{{- $owned := splitList " " (include "aether.chartOwnedNames" .) -}}
{{- range $key, $value := .Values.config.extra -}}
{{- if not (regexMatch "^[A-Z][A-Z0-9_]*$" $key) -}}
{{- fail (printf "config.extra.%s: not a setting name (upper-case letters, digits and _)" $key) -}}
{{- end -}}
{{- if or (has $key $secretNames) (has $key $.Values.secrets.keys) (regexMatch "(PASSWORD|TOKEN|SECRET)" $key) (hasPrefix "AETHER_PASSWORD_" $key) -}}
{{- fail (printf "config.extra.%s: a secret setting never goes into the ConfigMap; add it to secrets.keys and the Secret" $key) -}}
{{- end -}}
{{- if hasSuffix "_FILE" $key -}}
{{- fail (printf "config.extra.%s: *_FILE settings are set by the chart from secrets.keys" $key) -}}
{{- end -}}
{{- if has $key $owned -}}
{{- fail (printf "config.extra.%s: set by the chart (see values.yaml: config, persistence, feed)" $key) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.config.allowedHosts -}}
{{- fail "config.allowedHosts: list the site's host names (production refuses an empty ALLOWED_HOSTS)" -}}
{{- end -}}
{{- if has "*" .Values.config.allowedHosts -}}
{{- fail "config.allowedHosts: \"*\" is refused in production; list the site's host names" -}}
{{- end -}}
{{- range $key := .Values.secrets.keys -}}
{{- if not (regexMatch "^[A-Z][A-Z0-9_]*$" $key) -}}
{{- fail (printf "secrets.keys: %q is not a setting name (upper-case letters, digits and _)" $key) -}}
{{- end -}}
{{- if hasSuffix "_FILE" $key -}}
{{- fail (printf "secrets.keys: %s: list the setting (without _FILE); the chart sets %s" $key $key) -}}
{{- end -}}
{{- if eq $key "KRAKEN_CREDENTIALS_KEY" -}}
{{- fail "secrets.keys: KRAKEN_CREDENTIALS_KEY belongs to the local credential store; this chart uses AETHER_CREDENTIAL_STORE=kubernetes" -}}
{{- end -}}
{{- end -}}
{{- range $required := list "SECRET_KEY" "DATABASE_URL" "REDIS_URL" "METRICS_TOKEN" -}}
{{- if not (has $required $.Values.secrets.keys) -}}
{{- fail (printf "secrets.keys: %s is missing; production needs SECRET_KEY, DATABASE_URL, REDIS_URL and METRICS_TOKEN" $required) -}}
{{- end -}}
{{- end -}}
{{- if .Values.secrets.create -}}
{{- range $key := .Values.secrets.keys -}}
{{- if not (get $.Values.secrets.values $key) -}}
{{- fail (printf "secrets.values.%s: missing (secrets.create is true and %s is in secrets.keys)" $key $key) -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := .Values.secrets.values -}}
{{- if not (has $key $.Values.secrets.keys) -}}
{{- fail (printf "secrets.values.%s: not in secrets.keys, so no pod would see it; add it there" $key) -}}
{{- end -}}
{{- end -}}
{{- else if .Values.secrets.values -}}
{{- fail "secrets.values is set but secrets.create is false: the chart would ignore it (use secrets.existingSecret, or set secrets.create=true)" -}}
{{- end -}}
{{- if .Values.ingress.enabled -}}
{{- range .Values.ingress.hosts -}}
{{- if not (has .host $.Values.config.allowedHosts) -}}
{{- fail (printf "ingress.hosts: %s is not in config.allowedHosts, so Django would answer 400 to it" .host) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.migrations.syncUniverse (list "live" "file" "none")) -}}
{{- fail (printf "migrations.syncUniverse: %q; expected live, file or none" .Values.migrations.syncUniverse) -}}
{{- end -}}
{{- if not (has (toString .Values.config.timeframe) (list "1" "5" "15" "30" "60" "240" "1440")) -}}
{{- fail (printf "config.timeframe: %v; expected 1, 5, 15, 30, 60, 240 or 1440" .Values.config.timeframe) -}}
{{- end -}}
{{- range $pool, $spec := .Values.workers -}}
{{- if and $spec.enabled (not $spec.queues) -}}
{{- fail (printf "workers.%s.queues: a worker pool needs at least one queue" $pool) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The non-secret settings (the ConfigMap's data). */}}
{{- define "aether.configData" -}}
AETHER_ENV: "production"
AETHER_CREDENTIAL_STORE: "kubernetes"
AETHER_K8S_NAMESPACE: {{ .Release.Namespace | quote }}
ALLOWED_HOSTS: {{ join "," .Values.config.allowedHosts | quote }}
{{- with .Values.config.csrfTrustedOrigins }}
CSRF_TRUSTED_ORIGINS: {{ join "," . | quote }}
{{- end }}
AETHER_BEHIND_TLS_PROXY: {{ ternary "true" "false" .Values.config.behindTlsProxy | quote }}
LOG_LEVEL: {{ .Values.config.logLevel | quote }}
AETHER_PAIRS: {{ join "," .Values.config.pairs | quote }}
AETHER_TIMEFRAME: {{ .Values.config.timeframe | toString | quote }}
STATIC_ROOT: {{ .Values.config.staticRoot | quote }}
LEARNING_ARTIFACT_ROOT: {{ .Values.persistence.models.mountPath | quote }}
PYTHONUNBUFFERED: "1"
PYTHONDONTWRITEBYTECODE: "1"
HOME: "/tmp"
{{- range $key, $value := .Values.config.extra }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Pod pieces -------------------------------------------------------------------------------------- */}}

{{/* envFrom + the *_FILE variables. Call with (dict "root" $ "configMap" NAME). */}}
{{- define "aether.env" -}}
envFrom:
  - configMapRef:
      name: {{ .configMap }}
env:
{{- range $key := .root.Values.secrets.keys }}
  - name: {{ $key }}_FILE
    value: {{ printf "%s/%s" $.root.Values.secrets.mountPath $key | quote }}
{{- end }}
{{- end -}}

{{/* Volume mounts. Call with (dict "root" $ "models" bool "static" bool). */}}
{{- define "aether.volumeMounts" -}}
volumeMounts:
  - name: secrets
    mountPath: {{ .root.Values.secrets.mountPath }}
    readOnly: true
  - name: tmp
    mountPath: /tmp
{{- if and .models .root.Values.persistence.models.enabled }}
  - name: models
    mountPath: {{ .root.Values.persistence.models.mountPath }}
{{- end }}
{{- if .static }}
  - name: static
    mountPath: {{ .root.Values.config.staticRoot }}
{{- end }}
{{- end -}}

{{/* Volumes. Call with (dict "root" $ "secretName" NAME "models" bool "static" bool). */}}
{{- define "aether.volumes" -}}
volumes:
  - name: secrets
    secret:
      secretName: {{ .secretName }}
      defaultMode: 0440
      items:
{{- range $key := .root.Values.secrets.keys }}
        - key: {{ $key }}
          path: {{ $key }}
{{- end }}
  - name: tmp
    emptyDir:
      sizeLimit: {{ .root.Values.tmpSizeLimit }}
{{- if and .models .root.Values.persistence.models.enabled }}
  - name: models
    persistentVolumeClaim:
      claimName: {{ include "aether.modelsClaimName" .root }}
{{- end }}
{{- if .static }}
  - name: static
    emptyDir: {}
{{- end }}
{{- end -}}

{{- define "aether.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* nodeSelector, tolerations, affinity of a component's values. */}}
{{- define "aether.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The image, pull policy, working directory and container security of an Aether container. */}}
{{- define "aether.containerBase" -}}
image: {{ include "aether.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
workingDir: {{ .Values.image.workingDir }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end -}}

{{/* Pod annotations: a checksum of the ConfigMap (and of a chart-made Secret) so pods restart on change. */}}
{{- define "aether.checksums" -}}
checksum/config: {{ include "aether.configData" . | sha256sum }}
{{- if .Values.secrets.create }}
checksum/secret: {{ toJson .Values.secrets.values | sha256sum }}
{{- end }}
{{- end -}}

{{/* PromQL: how much a counter grew over a window, counting a series born inside the window (a labelled
prometheus_client counter appears at 1 on its first increment, which increase() misses). Call with
(dict "metric" SELECTOR "window" "15m"). */}}
{{- define "aether.increaseOrNew" -}}
((increase({{ .metric }}[{{ .window }}]) > 0) or ({{ .metric }} unless {{ .metric }} offset {{ .window }}))
{{- end -}}
