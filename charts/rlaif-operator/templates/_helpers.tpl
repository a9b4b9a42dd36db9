{{/* Names and labels shared by every template. */}}

{{- define "rlaif.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "rlaif.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "rlaif.labels" -}}
{{ include "rlaif.selectorLabels" . }}
app.kubernetes.io/part-of: rlaif-operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "rlaif.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rlaif.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rlaif.image" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-operator" .Chart.AppVersion) .Values.image.tag) -}}
{{- end -}}

{{/*
What the operator does, and nothing more: reconcile its two kinds and write their status,
own the children it builds, read pods (failure reasons, rank 0's address) and post Events.
*/}}
{{- define "rlaif.rules" -}}
- apiGroups: [rlaif.dev]
  resources: [rlaifjobs, rewardservers]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [rlaif.dev]
  resources: [rewardservers]
  verbs: [create]
- apiGroups: [rlaif.dev]
  resources: [rlaifjobs/status, rewardservers/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  # list: why a Job could not create its pods (FailedCreate, e.g. quota).
  verbs: [create, patch, list]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, create, patch, delete]
# PodGroups for runPolicy.gangScheduling (Volcano, scheduler-plugins coscheduling).
- apiGroups: [scheduling.volcano.sh, scheduling.x-k8s.io]
  resources: [podgroups]
  verbs: [get, list, create, patch, delete]
{{- end -}}
