{{/* Chart name, or nameOverride. */}}
{{- define "credential-webhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of every object: the release name when it contains the chart name (release
"credential-webhook" gives "credential-webhook"), else release-chart; fullnameOverride wins.
Cluster-scoped objects (ClusterRole, MutatingWebhookConfiguration) carry it too, so two releases
never share them.
*/}}
{{- define "credential-webhook.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "credential-webhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "credential-webhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "credential-webhook.labels" -}}
{{ include "credential-webhook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: credential-webhook
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The server image, by digest when one is given. */}}
{{- define "credential-webhook.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The server's ServiceAccount (the Pods run as it): the fullname. */}}
{{- define "credential-webhook.serviceAccountName" -}}
{{- include "credential-webhook.fullname" . }}
{{- end }}

{{/*
The server's own username, as the apiserver authenticates its requests: the only requester the
ValidatingAdmissionPolicy lets write our annotations on an existing Job.
*/}}
{{- define "credential-webhook.selfUsername" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "credential-webhook.serviceAccountName" . }}
{{- end }}

{{/*
The ConfigMap holding allowedRequesters and selfUsername: the parameters of the
ValidatingAdmissionPolicy, and the source of the server's CREDENTIAL_WEBHOOK_ALLOWED_REQUESTERS.
*/}}
{{- define "credential-webhook.admissionPolicyParams" -}}
{{- include "credential-webhook.fullname" . }}-admission-policy
{{- end }}

{{/* The serving Certificate (and its Secret): also the CA source of the webhook configuration. */}}
{{- define "credential-webhook.tlsName" -}}
{{- include "credential-webhook.fullname" . }}-tls
{{- end }}

{{/* "true" when AWS is enabled (a seed allowlist is set). */}}
{{- define "credential-webhook.awsEnabled" -}}
{{- if .Values.aws.seedRoles }}true{{ end }}
{{- end }}

{{/* "true" when Azure is enabled (a scope allowlist is set). */}}
{{- define "credential-webhook.azureEnabled" -}}
{{- if .Values.azure.allowedScopes }}true{{ end }}
{{- end }}

{{/* auto/true/false: resolves an autoBool value against the condition auto stands for. */}}
{{- define "credential-webhook.auto" -}}
{{- $v := index . 0 }}{{ $cond := index . 1 }}
{{- if eq (toString $v) "auto" }}{{ if $cond }}true{{ end }}
{{- else if eq (toString $v) "true" }}true
{{- end }}
{{- end }}

{{- define "credential-webhook.azureRBAC" -}}
{{- include "credential-webhook.auto" (list .Values.rbac.azureIdentityBinding (include "credential-webhook.azureEnabled" .)) }}
{{- end }}

{{- define "credential-webhook.podWebhook" -}}
{{- include "credential-webhook.auto" (list .Values.webhooks.pods.enabled .Values.aws.injectPodIdentity) }}
{{- end }}

{{- define "credential-webhook.iamPolicyConfigMap" -}}
{{- include "credential-webhook.auto" (list .Values.aws.iamPolicy.configMap (include "credential-webhook.awsEnabled" .)) }}
{{- end }}

{{/* "true" when the server's own Pods get the IRSA token themselves (no EKS webhook). */}}
{{- define "credential-webhook.ownIRSA" -}}
{{- if and .Values.aws.injectPodIdentity .Values.aws.roleArn }}true{{ end }}
{{- end }}

{{/* Contradictions that would install a server unable to do what the values ask. */}}
{{- define "credential-webhook.validate" -}}
{{- if and .Values.aws.injectPodIdentity (eq (toString .Values.webhooks.pods.enabled) "false") }}
{{- fail "aws.injectPodIdentity needs the Pod webhook: webhooks.pods.enabled must be auto or true" }}
{{- end }}
{{- if and .Values.aws.resticSidecar.enabled (not .Values.aws.injectPodIdentity) }}
{{- fail "aws.resticSidecar.enabled needs aws.injectPodIdentity (the sidecar is added on the Pod path)" }}
{{- end }}
{{- if and .Values.rbac.create (include "credential-webhook.azureEnabled" .) (eq (toString .Values.rbac.azureIdentityBinding) "false") }}
{{- fail "azure.allowedScopes is set but rbac.azureIdentityBinding is false: the server could not bind identities (set it to auto, or rbac.create=false and grant the rules yourself)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled (the plain-HTTP metrics port)" }}
{{- end }}
{{- if and .Values.clientAuth.caSecretName (not .Values.clientAuth.allowedNames) }}
{{- fail "clientAuth.caSecretName needs clientAuth.allowedNames: the client certificate names of the apiserver (common name or DNS SAN) that may call /mutate/*" }}
{{- end }}
{{- if and .Values.clientAuth.allowedNames (not .Values.clientAuth.caSecretName) }}
{{- fail "clientAuth.allowedNames needs clientAuth.caSecretName: the Secret holding ca.crt, the CA that signed those client certificates" }}
{{- end }}
{{- /*
A cloud on and nobody allowed to ask for it: the server would refuse every ServiceAccount, and the
backups fail with nothing but an admission warning to explain it. Only with a cloud enabled: the
static manifests (no cloud until an overlay sets one) still render.
*/}}
{{- if and (or (include "credential-webhook.awsEnabled" .) (include "credential-webhook.azureEnabled" .)) (not .Values.allowedRequesters) }}
{{- fail (printf "%s is set but allowedRequesters is empty, so nobody could get a cloud identity. Set it to the KubeStash operator's ServiceAccount as system:serviceaccount:<namespace>:<name>; find the name with\n  kubectl -n kubestash get deploy -l app.kubernetes.io/name=kubestash-operator -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}'\nFor a KubeStash release named kubestash in namespace kubestash (its Deployment is kubestash-kubestash-operator-operator):\n  --set 'allowedRequesters={system:serviceaccount:kubestash:kubestash-kubestash-operator}'" (ternary "aws.seedRoles" "azure.allowedScopes" (not (empty .Values.aws.seedRoles)))) }}
{{- end }}
{{- end }}

{{/* namespaceSelector of every webhook: never the release namespace, nor excludeNamespaces. */}}
{{- define "credential-webhook.namespaceSelector" -}}
namespaceSelector:
  matchExpressions:
    # Never our own namespace: the server must be able to start while it is down.
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ prepend .Values.webhooks.excludeNamespaces .Release.Namespace | uniq | toJson }}
{{- end }}
