{{/* Names and labels shared by every object. */}}
{{- define "emostream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The StatefulSet's governing (headless) Service: gives each pod a stable DNS name. */}}
{{- define "emostream.headlessName" -}}
{{- printf "%s-headless" (include "emostream.fullname" . | trunc 54 | trimSuffix "-") -}}
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

{{/*
The daemon's configuration as one map (JSON): what the chart derives from its own values,
deep-merged with extraConfig (TOML text) and then with `config` (a map); the later wins, key by
key, so an override lands inside the table the chart already writes (a TOML file may not open
the same table twice, which is why appending text could never set e.g. batching keys).
*/}}
{{- define "emostream.config" -}}
{{- $v := .Values -}}
{{- $kafka := dict
      "brokers" $v.kafka.brokers
      "group_id" $v.kafka.groupId
      "input_topics" $v.kafka.inputTopics
      "output_topic" $v.kafka.outputTopic
      "dead_letter_topic" $v.kafka.deadLetterTopic
      "delivery" $v.kafka.delivery
      "transaction_timeout_ms" (int64 $v.kafka.transactionTimeoutMs)
      "properties" dict -}}
{{- range $k, $p := $v.kafka.properties -}}
{{- /* librdkafka takes every property as a string (e.g. "linger.ms" = "5"). */ -}}
{{- $_ := set $kafka.properties $k (toString $p) -}}
{{- end -}}
{{- $registry := dict "max_swaps_per_minute" (int64 $v.registry.maxSwapsPerMinute) -}}
{{- if $v.registry.enabled -}}
{{- $_ := set $registry "root" "/var/lib/emostream/registry" -}}
{{- end -}}
{{- if $v.registry.url -}}
{{- $_ := set $registry "root" $v.registry.url -}}
{{- $_ := set $registry "cache_dir" "/var/cache/emostream/registry" -}}
{{- $_ := set $registry "poll_interval_ms" (int64 $v.registry.pollIntervalMs) -}}
{{- end -}}
{{- if $v.registry.controlTopic -}}
{{- $_ := set $registry "control_topic" $v.registry.controlTopic -}}
{{- $_ := set $registry "control_key_file" (printf "/var/run/secrets/emostream/control/%s" $v.registry.controlKeySecret.key) -}}
{{- end -}}
{{- $chart := dict
      "kafka" $kafka
      "admin" (dict "bind" (printf "0.0.0.0:%d" (int64 $v.admin.port)))
      "api" (dict "enabled" $v.api.enabled)
      "ui" (dict "enabled" $v.ui.enabled "show_text" $v.ui.showText "live_size" (int64 $v.ui.liveSize))
      "shutdown" (dict "timeout_ms" (int64 $v.shutdownTimeoutMs))
      "log" (dict "format" "json")
      "registry" $registry -}}
{{- toJson (mergeOverwrite $chart (include "emostream.userConfig" . | fromJson)) -}}
{{- end -}}

{{/*
extraConfig (TOML) merged with `config` (config wins), as JSON. Refuses the keys the chart owns:
setting them here would be overridden by the pod's environment or would disagree with objects
other than the ConfigMap (probes, Service, KEDA trigger, mounts, the grace-period check).
*/}}
{{- define "emostream.userConfig" -}}
{{- $extra := dict -}}
{{- with .Values.extraConfig -}}
{{- $extra = fromToml . -}}
{{- if hasKey $extra "Error" -}}
{{- fail (printf "extraConfig is not valid TOML: %v" $extra.Error) -}}
{{- end -}}
{{- end -}}
{{- $user := mergeOverwrite $extra (deepCopy (.Values.config | default dict)) -}}
{{- $owned := dict
      "admin.bind" "set admin.port (the probes and the Service use it)"
      "admin.token" "set admin.tokenSecret (a secret never goes into the ConfigMap)"
      "kafka.brokers" "set kafka.brokers (the KEDA trigger uses it too)"
      "kafka.group_id" "set kafka.groupId (the KEDA trigger and the transactional ids use it too)"
      "kafka.input_topics" "set kafka.inputTopics (the KEDA trigger uses it too)"
      "kafka.transactional_id" "each pod gets <kafka.groupId>-<pod name> from its environment"
      "registry.replica_id" "each pod gets its pod name from its environment"
      "registry.root" "set registry.enabled (it mounts the volume there) or registry.url"
      "registry.control_topic" "set registry.controlTopic (it mounts the key too)"
      "registry.control_key_file" "set registry.controlKeySecret (it mounts the key there)"
      "shutdown.timeout_ms" "set shutdownTimeoutMs (checked against terminationGracePeriodSeconds)" -}}
{{- range $key, $why := $owned -}}
{{- $parts := splitList "." $key -}}
{{- $section := get $user (first $parts) -}}
{{- if and (kindIs "map" $section) (hasKey $section (last $parts)) -}}
{{- fail (printf "config/extraConfig must not set %s: %s" $key $why) -}}
{{- end -}}
{{- end -}}
{{- toJson $user -}}
{{- end -}}

{{/*
A map as a TOML document: each table's plain keys under its header, then its sub-tables, each
table written once. Argument: (list PATH MAP), PATH the table's keys from the root.
*/}}
{{- define "emostream.toml.table" -}}
{{- $path := index . 0 -}}
{{- $table := index . 1 -}}
{{- if $path }}
[{{ include "emostream.toml.path" $path }}]
{{- end -}}
{{- range $k, $v := $table -}}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
{{ include "emostream.toml.key" $k }} = {{ include "emostream.toml.value" (list (append $path $k) $v) }}
{{- end -}}
{{- end -}}
{{- range $k, $v := $table -}}
{{- if kindIs "map" $v }}
{{ include "emostream.toml.table" (list (append $path $k) $v) }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A key: bare when TOML allows it, a quoted string otherwise (e.g. "sasl.username"). */}}
{{- define "emostream.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "emostream.toml.path" -}}
{{- $keys := list -}}
{{- range . -}}{{- $keys = append $keys (include "emostream.toml.key" .) -}}{{- end -}}
{{- join "." $keys -}}
{{- end -}}

{{/*
One value. Numbers from values files arrive as floats: a whole one is written as an integer
(the daemon's integer keys refuse 64.0). Strings go through JSON escaping, which TOML's basic
strings read the same way. Argument: (list PATH VALUE), PATH only for the error message.
*/}}
{{- define "emostream.toml.value" -}}
{{- $path := index . 0 -}}
{{- $v := index . 1 -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) -}}
{{- printf "%d" $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}{{- printf "%d" (int64 $v) -}}{{- else -}}{{- printf "%v" $v -}}{{- end -}}
{{- else if kindIs "slice" $v -}}
{{- $items := list -}}
{{- range $v -}}{{- $items = append $items (include "emostream.toml.value" (list $path .)) -}}{{- end -}}
[{{ join ", " $items }}]
{{- else -}}
{{- fail (printf "config %s: a %s cannot be written as a TOML value here" (join "." $path) (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* Checks that keep a bad values file from rendering. */}}
{{- define "emostream.validate" -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- $shutdown := div (int .Values.shutdownTimeoutMs) 1000 -}}
{{- if le $grace $shutdown -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed shutdownTimeoutMs (%d s): the daemon needs that long to finish in-flight work and commit" $grace $shutdown) -}}
{{- end -}}
{{- if not (has .Values.workload (list "Deployment" "StatefulSet")) -}}
{{- fail (printf "workload must be Deployment or StatefulSet (got %v)" .Values.workload) -}}
{{- end -}}
{{- if lt (int .Values.rollingUpdate.maxUnavailable) 1 -}}
{{- fail "rollingUpdate.maxUnavailable must be at least 1: there is no surge pod, so 0 would never replace one" -}}
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
{{- if and (not (or .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled)) (gt (int .Values.replicaCount) (int .Values.kafka.inputPartitions)) -}}
{{- fail "replicaCount must not exceed kafka.inputPartitions: a replica without a partition is never Ready, which also stalls every rollout" -}}
{{- end -}}
{{- if and .Values.registry.controlTopic (not (or .Values.registry.enabled .Values.registry.url)) -}}
{{- fail "registry.controlTopic needs registry.enabled or registry.url (control messages name registry versions)" -}}
{{- end -}}
{{- if and .Values.registry.enabled .Values.registry.url -}}
{{- fail "set registry.enabled (a shared volume) or registry.url (object storage), not both" -}}
{{- end -}}
{{- if and .Values.registry.url (not (regexMatch "^(s3|s3a|gs|az|abfs|abfss)://[^/]+" .Values.registry.url)) -}}
{{- fail "registry.url must be s3://bucket/prefix, gs://bucket/prefix or az://container/prefix" -}}
{{- end -}}
{{- if not (has .Values.kafka.delivery (list "at_least_once" "exactly_once")) -}}
{{- fail "kafka.delivery must be at_least_once or exactly_once" -}}
{{- end -}}
{{- $reserved := list "POD_NAME" "EMOSTREAM__REGISTRY__REPLICA_ID" "EMOSTREAM__KAFKA__TRANSACTIONAL_ID" "EMOSTREAM__ADMIN__TOKEN" -}}
{{- range .Values.kafka.secretProperties -}}
{{- $reserved = append $reserved (include "emostream.secretEnvName" .property) -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- if has .name $reserved -}}
{{- fail (printf "extraEnv must not set %s: the chart sets it (see values.yaml)" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
