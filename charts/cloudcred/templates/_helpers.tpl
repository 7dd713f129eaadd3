{{/* The chart name, or nameOverride. */}}
{{- define "cloudcred.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: the release name, with the chart name unless already in it. */}}
{{- define "cloudcred.fullname" -}}
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

{{- define "cloudcred.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cloudcred.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "cloudcred.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cloudcred.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cloudcred
{{- end }}

{{- define "cloudcred.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cloudcred.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when image.digest is set, else repository:tag. */}}
{{- define "cloudcred.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" when the replicas elect an active one through kopf's peering (replicaCount > 1). */}}
{{- define "cloudcred.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* The kopf peering object's name. */}}
{{- define "cloudcred.peeringName" -}}
{{- default (include "cloudcred.fullname" .) .Values.peering.name }}
{{- end }}

{{/* The watched namespaces as a JSON list when each one is a plain name (the operator's
rule: entries may hold several names separated by commas; a glob or a "!" exclusion
makes them patterns), else "[]": all namespaces, or patterns. Plain names get their
Secret rights per namespace (templates/rbac.yaml). */}}
{{- define "cloudcred.plainNamespaces" -}}
{{- $names := list }}
{{- $plain := true }}
{{- range .Values.namespaces }}
{{- range splitList "," . }}
{{- $name := trim . }}
{{- if $name }}
{{- if or (hasPrefix "!" $name) (regexMatch "[*?\\[\\]]" $name) }}
{{- $plain = false }}
{{- end }}
{{- $names = append $names $name }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $plain $names }}{{ $names | uniq | sortAlpha | toJson }}{{ else }}[]{{ end }}
{{- end }}
