{{/*
Names. The contract's strings (labels, annotations, object names) are defined in
crds/src/contract.rs; the ones the chart uses are spelled here once.
*/}}

{{- define "agent-boundary.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name. */}}
{{- define "agent-boundary.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agent-boundary.webhook.fullname" -}}{{ include "agent-boundary.fullname" . }}-webhook{{- end }}
{{- define "agent-boundary.operator.fullname" -}}{{ include "agent-boundary.fullname" . }}-operator{{- end }}
{{- define "agent-boundary.nodeAgent.fullname" -}}{{ include "agent-boundary.fullname" . }}-node-agent{{- end }}
{{/* The MutatingWebhookConfiguration (cluster-scoped, so named per release). */}}
{{- define "agent-boundary.webhookConfiguration" -}}{{ include "agent-boundary.fullname" . }}{{- end }}
{{/* The Secret with the webhook's tls.crt, tls.key, ca.crt (operator or cert-manager writes it). */}}
{{- define "agent-boundary.webhook.secret" -}}{{ include "agent-boundary.webhook.fullname" . }}-tls{{- end }}
{{/* The operator keeps its CA in `<webhook secret>-ca` (contract::objects::CA_SECRET_SUFFIX). */}}
{{- define "agent-boundary.webhook.caSecret" -}}{{ include "agent-boundary.webhook.secret" . }}-ca{{- end }}
{{- define "agent-boundary.leaseName" -}}{{ include "agent-boundary.operator.fullname" . }}{{- end }}
{{/* DNS names of the webhook Service, for its serving certificate. */}}
{{- define "agent-boundary.webhook.dnsNames" -}}
{{- $svc := include "agent-boundary.webhook.fullname" . -}}
{{ $svc }}.{{ .Release.Namespace }}.svc,{{ $svc }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "agent-boundary.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "agent-boundary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: agent-boundary
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of a component: include with (dict "ctx" $ "component" "webhook"). */}}
{{- define "agent-boundary.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-boundary.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "agent-boundary.componentLabels" -}}
{{ include "agent-boundary.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* `[registry/]repository:tag` of an image block (dict "image" BLOCK "root" $): the tag defaults
to the chart's appVersion, so a chart pulled from a registry runs the images of its own release. */}}
{{- define "agent-boundary.image" -}}
{{- $registry := .root.Values.imageRegistry | default "" | trimSuffix "/" -}}
{{- $repository := ternary (printf "%s/%s" $registry .image.repository) .image.repository (ne $registry "") -}}
{{- printf "%s:%s" $repository (toString (.image.tag | default .root.Chart.AppVersion)) }}
{{- end }}

{{/* The pod-level security context of the webhook and operator (Pod Security "restricted"). */}}
{{- define "agent-boundary.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "agent-boundary.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* PodDisruptionBudget apiVersion: policy/v1 from Kubernetes 1.21, policy/v1beta1 on 1.20. */}}
{{- define "agent-boundary.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end }}

{{/* Namespaces the webhook never mutates. */}}
{{- define "agent-boundary.excludedNamespaces" -}}
{{- $names := list .Release.Namespace "kube-system" }}
{{- range .Values.webhook.excludeNamespaces }}{{ $names = append $names . }}{{ end }}
{{- toJson ($names | uniq) }}
{{- end }}
