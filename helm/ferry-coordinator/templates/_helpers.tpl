{{- define "ferry-coordinator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry-coordinator.labels" -}}
app.kubernetes.io/name: ferry-coordinator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferry-coordinator.selector" -}}
app.kubernetes.io/name: ferry-coordinator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferry-coordinator.caSecret" -}}
{{- default (printf "%s-ca" (include "ferry-coordinator.fullname" .)) .Values.ca.existingSecret -}}
{{- end -}}

{{- define "ferry-coordinator.tokenSecret" -}}
{{- default (printf "%s-bootstrap" (include "ferry-coordinator.fullname" .)) .Values.bootstrapToken.existingSecret -}}
{{- end -}}

{{- define "ferry-coordinator.gitSecret" -}}
{{- if .Values.git.existingSecret -}}
{{- .Values.git.existingSecret -}}
{{- else if .Values.git.credentials -}}
{{- printf "%s-git" (include "ferry-coordinator.fullname" .) -}}
{{- end -}}
{{- end -}}
