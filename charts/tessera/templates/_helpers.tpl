{{/* Release-scoped name of every object: "<release>-tessera", or the release name alone when it already says tessera. */}}
{{- define "tessera.fullname" -}}
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

{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tessera.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tessera.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tessera
{{- end -}}

{{- define "tessera.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tessera.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: "<repository>@<digest>" when a digest is set (it wins over the tag), else "<repository>:<tag>". */}}
{{- define "tessera.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The container's ports must differ (JSON Schema cannot compare two values, so the check is here). */}}
{{- define "tessera.validatePorts" -}}
{{- $ports := dict "metrics.port" .Values.metrics.port "operator.healthPort" .Values.operator.healthPort -}}
{{- if .Values.webhook.enabled -}}{{- $_ := set $ports "webhook.port" .Values.webhook.port -}}{{- end -}}
{{- $seen := dict -}}
{{- range $name, $port := $ports -}}
{{- $key := toString (int $port) -}}
{{- if hasKey $seen $key -}}
{{- fail (printf "%s and %s are both %s: the operator's ports must differ" (get $seen $key) $name $key) -}}
{{- end -}}
{{- $_ := set $seen $key $name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the webhook's serving certificate. */}}
{{- define "tessera.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "tessera.fullname" .) -}}
{{- end -}}

{{/* kopf's peering object shared by the replicas (when there are several). */}}
{{- define "tessera.peeringName" -}}
{{- include "tessera.fullname" . -}}
{{- end -}}
