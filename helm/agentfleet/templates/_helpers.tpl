{{/* Full name of the release's objects. */}}
{{- define "agentfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Common labels. */}}
{{- define "agentfleet.labels" -}}
app.kubernetes.io/name: agentfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one role: pass (dict "root" $ "role" $name). */}}
{{- define "agentfleet.selectorLabels" -}}
app.kubernetes.io/name: agentfleet
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* A role's settings: its entry over roleDefaults. Returns YAML; use with fromYaml. */}}
{{- define "agentfleet.role" -}}
{{- $role := deepCopy (default dict .settings) -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.roleDefaults) $role) -}}
{{- end -}}
