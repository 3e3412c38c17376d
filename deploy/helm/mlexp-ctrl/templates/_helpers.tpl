{{/* Names, labels and the two config files, shared by the templates. */}}

{{- define "mlexp-ctrl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlexp-ctrl.fullname" -}}
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

{{- define "mlexp-ctrl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlexp-ctrl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlexp-ctrl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mlexp-ctrl.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mlexp-ctrl
{{- end -}}

{{- define "mlexp-ctrl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlexp-ctrl.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Lease the service holds; with lease.enabled false, the service's own default. */}}
{{- define "mlexp-ctrl.leaseName" -}}
{{- if .Values.lease.enabled -}}
{{- default (include "mlexp-ctrl.fullname" .) .Values.lease.name -}}
{{- else -}}
mlexp-ctrl
{{- end -}}
{{- end -}}

{{/* The Secret holding tokens.yaml: the user's, or the chart's. */}}
{{- define "mlexp-ctrl.tokensSecret" -}}
{{- default (printf "%s-tokens" (include "mlexp-ctrl.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "mlexp-ctrl.tokensKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}tokens.yaml{{- end -}}
{{- end -}}

{{/* True when the chart makes up the admin token (no existing Secret, no tokens given). */}}
{{- define "mlexp-ctrl.generatedToken" -}}
{{- if and (not .Values.auth.existingSecret) (empty .Values.auth.tokens) -}}true{{- end -}}
{{- end -}}

{{- define "mlexp-ctrl.configDir" -}}/etc/mlexp/config{{- end -}}
{{- define "mlexp-ctrl.tokensDir" -}}/etc/mlexp/tokens{{- end -}}
{{- define "mlexp-ctrl.caDir" -}}/etc/mlexp/ca{{- end -}}

{{/* server.yaml: the user's settings, then the chart's (paths, host, port) on top. */}}
{{- define "mlexp-ctrl.serverYaml" -}}
{{- $fullname := include "mlexp-ctrl.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list $fullname (printf "%s.%s" $fullname $ns) (printf "%s.%s.svc" $fullname $ns) (printf "%s.%s.svc.cluster.local" $fullname $ns) -}}
{{- $chart := dict
    "data_dir" "/data"
    "host" "0.0.0.0"
    "port" (int .Values.containerPort)
    "k8s_config_file" (printf "%s/k8s-config.yaml" (include "mlexp-ctrl.configDir" .))
    "tokens_file" (printf "%s/tokens.yaml" (include "mlexp-ctrl.tokensDir" .))
    "allowed_hosts" (concat $hosts .Values.allowedHosts | uniq)
-}}
{{- if .Values.gitCA -}}
{{- $_ := set $chart "git_ca_bundle" (printf "%s/git-ca.pem" (include "mlexp-ctrl.caDir" .)) -}}
{{- end -}}
{{- if .Values.s3CA -}}
{{- $_ := set $chart "storage" (dict "ca_bundle" (printf "%s/s3-ca.pem" (include "mlexp-ctrl.caDir" .))) -}}
{{- end -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.server) $chart) -}}
{{- end -}}

{{/* k8s-config.yaml: in-cluster, the namespace list, the lease; then the user's extras. */}}
{{- define "mlexp-ctrl.k8sConfigYaml" -}}
{{- $chart := dict
    "in_cluster" true
    "namespaces" (dict "allowed" .Values.namespaces "prohibited" (list "kube-*"))
-}}
{{- if .Values.serviceAccountDir -}}
{{- $_ := set $chart "service_account_dir" .Values.serviceAccountDir -}}
{{- end -}}
{{- if .Values.lease.enabled -}}
{{- $_ := set $chart "lease" (dict "namespace" .Release.Namespace "name" (include "mlexp-ctrl.leaseName" .) "duration_seconds" .Values.lease.durationSeconds) -}}
{{- end -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.kubernetes) $chart) -}}
{{- end -}}
