{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "dedup-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full resource name: fullnameOverride, else "<release>-<chart>" (just "<release>" when the release
name already contains the chart name). 63 characters at most: DNS label limit.
*/}}
{{- define "dedup-worker.fullname" -}}
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

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "dedup-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is immutable).
*/}}
{{- define "dedup-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dedup-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels for every resource.
*/}}
{{- define "dedup-worker.labels" -}}
helm.sh/chart: {{ include "dedup-worker.chart" . }}
{{ include "dedup-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dedup-worker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
ServiceAccount of the worker pods.
*/}}
{{- define "dedup-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dedup-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is given, else repository:tag (tag defaults to
the chart's appVersion).
*/}}
{{- define "dedup-worker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Seconds in a duration such as "30s", "2m", "1h30m", "7d", "500ms" (the schema admits only these).
Milliseconds are rounded up to whole seconds.
*/}}
{{- define "dedup-worker.durationSeconds" -}}
{{- $ms := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d)" . -1 }}
{{- $n := regexFind "^[0-9]+" . | atoi }}
{{- $unit := regexReplaceAll "^[0-9]+" . "" }}
{{- $factor := get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000) $unit }}
{{- $ms = add $ms (mul $n $factor) }}
{{- end }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the configured value, which must exceed the drain timeout, or the
drain timeout plus 15 s of slack for process exit and the kubelet's own bookkeeping.
*/}}
{{- define "dedup-worker.terminationGracePeriodSeconds" -}}
{{- $drain := include "dedup-worker.durationSeconds" .Values.worker.drainTimeout | atoi }}
{{- $grace := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $grace }}
{{- add $drain 15 }}
{{- else if le (int $grace) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed worker.drainTimeout (%s = %ds): the kubelet would kill a draining worker" (int $grace) .Values.worker.drainTimeout $drain) }}
{{- else }}
{{- int $grace }}
{{- end }}
{{- end }}

{{/*
Guards for combinations the schema cannot express. Included by the Deployment, so every render
runs them once.
*/}}
{{- define "dedup-worker.validate" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) $partitions }}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d): consumers beyond the partition count of %s sit idle" (int .Values.autoscaling.maxReplicas) $partitions .Values.kafka.commandsTopic) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) exceeds autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and (eq .Values.autoscaling.mode "hpa") (lt (int .Values.autoscaling.minReplicas) 1) }}
{{- fail "autoscaling.minReplicas must be at least 1 with autoscaling.mode=hpa (only KEDA scales to zero)" }}
{{- end }}
{{- else if gt (int .Values.replicaCount) $partitions }}
{{- fail (printf "replicaCount (%d) exceeds kafka.partitions (%d): consumers beyond the partition count of %s sit idle" (int .Values.replicaCount) $partitions .Values.kafka.commandsTopic) }}
{{- end }}
{{- with .Values.kafka.tls }}
{{- if and .certKey (not .keyKey) }}
{{- fail "kafka.tls.certKey needs kafka.tls.keyKey (mutual TLS needs the client key)" }}
{{- end }}
{{- if and (or .certKey .keyKey) (not .existingSecret) }}
{{- fail "kafka.tls.certKey/keyKey need kafka.tls.existingSecret" }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (ge (include "dedup-worker.durationSeconds" .Values.metrics.serviceMonitor.scrapeTimeout | atoi) (include "dedup-worker.durationSeconds" .Values.metrics.serviceMonitor.interval | atoi)) }}
{{- fail "metrics.serviceMonitor.scrapeTimeout must be shorter than metrics.serviceMonitor.interval" }}
{{- end }}
{{- end }}

{{/*
librdkafka security.protocol for the kafka.tls / kafka.sasl switches.
*/}}
{{- define "dedup-worker.kafkaSecurityProtocol" -}}
{{- if and .Values.kafka.sasl.enabled .Values.kafka.tls.enabled }}SASL_SSL
{{- else if .Values.kafka.sasl.enabled }}SASL_PLAINTEXT
{{- else if .Values.kafka.tls.enabled }}SSL
{{- else }}PLAINTEXT
{{- end }}
{{- end }}

{{/*
Where the Kafka TLS Secret is mounted.
*/}}
{{- define "dedup-worker.kafkaTlsDir" -}}
/etc/dedup-worker/kafka-tls
{{- end }}

{{/*
"-X key=value" arguments for librdkafka: security settings from kafka.tls / kafka.sasl, then
kafka.extraConfig. Secrets never appear here, not even as $(VAR) references (the kubelet would
expand them into the process's argv, readable in /proc and ps): the SASL username and password
are the secretKeyRef environment variables DEDUP_KAFKA_SASL_USERNAME / DEDUP_KAFKA_SASL_PASSWORD,
which the worker reads as sasl.username / sasl.password; certificates are file paths into the
mounted Secret.
*/}}
{{- define "dedup-worker.kafkaArgs" -}}
{{- $args := list }}
{{- if or .Values.kafka.tls.enabled .Values.kafka.sasl.enabled }}
{{- $args = append $args (printf "security.protocol=%s" (include "dedup-worker.kafkaSecurityProtocol" .)) }}
{{- end }}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.existingSecret }}
{{- $dir := include "dedup-worker.kafkaTlsDir" . }}
{{- with .Values.kafka.tls.caKey }}
{{- $args = append $args (printf "ssl.ca.location=%s/%s" $dir .) }}
{{- end }}
{{- with .Values.kafka.tls.certKey }}
{{- $args = append $args (printf "ssl.certificate.location=%s/%s" $dir .) }}
{{- $args = append $args (printf "ssl.key.location=%s/%s" $dir $.Values.kafka.tls.keyKey) }}
{{- end }}
{{- end }}
{{- if .Values.kafka.sasl.enabled }}
{{- $args = append $args (printf "sasl.mechanisms=%s" .Values.kafka.sasl.mechanism) }}
{{- end }}
{{- range $key, $value := .Values.kafka.extraConfig }}
{{- /* Helm decodes YAML numbers as float64: print whole numbers as integers, not 5.24288e+07 */}}
{{- if kindIs "float64" $value }}
{{- $value = int64 $value }}
{{- end }}
{{- $args = append $args (printf "%s=%v" $key $value) }}
{{- end }}
{{- range $args }}
- "-X"
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Environment shared by the worker and the migration Job: the database DSN from the existing Secret.
*/}}
{{- define "dedup-worker.dbEnv" -}}
- name: DEDUP_DB
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | quote }}
      key: {{ .Values.database.dsnKey | quote }}
- name: DEDUP_DB_SCHEMA
  value: {{ .Values.database.schema | quote }}
{{- end }}
