{{- define "ferry-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry-agent.labels" -}}
app.kubernetes.io/name: ferry-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferry-agent.selector" -}}
app.kubernetes.io/name: ferry-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferry-agent.serviceAccount" -}}
{{- default (include "ferry-agent.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "ferry-agent.joinSecret" -}}
{{- default (printf "%s-join" (include "ferry-agent.fullname" .)) .Values.joinToken.existingSecret -}}
{{- end -}}

{{- define "ferry-agent.gitSecret" -}}
{{- if .Values.git.existingSecret -}}
{{- .Values.git.existingSecret -}}
{{- else if .Values.git.credentials -}}
{{- printf "%s-git" (include "ferry-agent.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "ferry-agent.caConfigMap" -}}
{{- default (printf "%s-ca" (include "ferry-agent.fullname" .)) .Values.coordinator.existingCaConfigMap -}}
{{- end -}}
