{{/* Names and labels shared by every object. */}}
{{- define "emostream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "emostream.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "emostream.labels" -}}
{{ include "emostream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* librdkafka property -> EMOSTREAM_KAFKA_SECRET_<NAME> (dots as underscores, upper case). */}}
{{- define "emostream.secretEnvName" -}}
{{- printf "EMOSTREAM_KAFKA_SECRET_%s" (. | replace "." "_" | upper) -}}
{{- end -}}

{{/* Checks that keep a bad values file from rendering. */}}
{{- define "emostream.validate" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- $shutdown := div (int .Values.shutdownTimeoutMs) 1000 -}}
{{- if le $grace $shutdown -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed shutdownTimeoutMs (%d s): the daemon needs that long to finish in-flight work and commit" $grace $shutdown) -}}
{{- end -}}
{{- if and .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled -}}
{{- fail "autoscaling: enable keda or hpa, not both" -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.keda.maxReplicas) (int .Values.kafka.inputPartitions) -}}
{{- fail "autoscaling.keda.maxReplicas must not exceed kafka.inputPartitions: replicas beyond the partition count sit idle" -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.hpa.maxReplicas) (int .Values.kafka.inputPartitions) -}}
{{- fail "autoscaling.hpa.maxReplicas must not exceed kafka.inputPartitions" -}}
{{- end -}}
{{- if and .Values.registry.controlTopic (not .Values.registry.enabled) -}}
{{- fail "registry.controlTopic needs registry.enabled (control messages name registry versions)" -}}
{{- end -}}
{{- if not (has .Values.kafka.delivery (list "at_least_once" "exactly_once")) -}}
{{- fail "kafka.delivery must be at_least_once or exactly_once" -}}
{{- end -}}
{{- end -}}
