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
What the operator does, and nothing more (tests/integration/test_operator.py replays every call
the real operator makes against these rules and fails on a missing or an unused one). Each
kind it reconciles or owns is read through one list+watch (children with a label selector)
into a cache, never with per-object GETs; it writes only what it built. get on a kind it
creates: what stands in a child's place when a create is refused as AlreadyExists (an
object it does not control, which it never adopts).
*/}}
{{- define "rlaif.rules" -}}
- apiGroups: [rlaif.dev]
  resources: [rlaifjobs]
  # patch: the accepted-immutable-spec annotation; delete: ttlSecondsAfterFinished.
  verbs: [list, watch, patch, delete]
- apiGroups: [rlaif.dev]
  resources: [rewardservers]
  verbs: [list, watch, create, patch]
- apiGroups: [rlaif.dev]
  resources: [rlaifjobs/status, rewardservers/status]
  verbs: [patch]
# Children set blockOwnerDeletion on their ownerReference; clusters that enforce it
# (OwnerReferencesPermissionEnforcement, e.g. OpenShift) require update on the owner's
# finalizers to create them.
- apiGroups: [rlaif.dev]
  resources: [rlaifjobs/finalizers, rewardservers/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch, create, patch, get]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, get]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [events]
  # create: the operator's Events; list and watch: FailedCreate of its trainer Jobs (quota).
  verbs: [create, list, watch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, delete, get]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, get]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, get]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, delete, get]
# HPAs for RewardServers with spec.autoscaling (on their scale subresource).
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete, get]
# PodGroups for runPolicy.gangScheduling (Volcano, scheduler-plugins coscheduling); not
# watched, as their CRDs may be missing.
- apiGroups: [scheduling.volcano.sh, scheduling.x-k8s.io]
  resources: [podgroups]
  verbs: [get, create]
{{- end -}}

{{/* The admission webhook: its Service, its certificate's Secret, its configuration. */}}
{{- define "rlaif.webhookName" -}}
{{- printf "%s-webhook" (include "rlaif.fullname" .) -}}
{{- end -}}

{{- define "rlaif.webhookHost" -}}
{{- printf "%s.%s.svc" (include "rlaif.webhookName" .) .Release.Namespace -}}
{{- end -}}

{{/* A map as key=value,key=value (sorted), the operator's form for label selectors. */}}
{{- define "rlaif.labelList" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs -}}
{{- end -}}
