{{/* Names and labels, as in the prometheus-community charts. */}}
{{- define "celery-exporter.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "celery-exporter.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "celery-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: exporter
{{- end }}

{{/* Labels of every object; the component is the caller's (exporter, alerting, dashboard). */}}
{{- define "celery-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "celery-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: celery
{{- end }}

{{- define "celery-exporter.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The broker URL as CELERY_BROKER_URL, from the Secret (sidecars). */}}
{{- define "celery-exporter.brokerEnv" -}}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "broker.existingSecret: the Secret holding the broker URL" .Values.broker.existingSecret }}
      key: {{ .Values.broker.key }}
{{- end }}

{{/*
One exporter container, the same for every role but for its flags and how it gets the broker
URL. Call with (dict "root" $ "args" <list> "env" <list> "mounts" <list> "extra" <dict>).
*/}}
{{- define "celery-exporter.container" -}}
{{- $v := .root.Values -}}
- name: exporter
  image: {{ include "celery-exporter.image" .root }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    {{- toYaml (concat .args $v.extraArgs) | nindent 4 }}
  {{- with concat (.env | default list) $v.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: metrics
      containerPort: 9808
      protocol: TCP
  livenessProbe:
    {{- toYaml $v.livenessProbe | nindent 4 }}
  {{- if not .noReadiness }}
  readinessProbe:
    {{- toYaml $v.readinessProbe | nindent 4 }}
  {{- end }}
  {{- with .extra }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  resources:
    {{- toYaml (.resources | default $v.resources) | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  {{- with .mounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
