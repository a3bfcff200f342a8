{{- define "edgeloop.labels" -}}
app.kubernetes.io/part-of: edgeloop
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "edgeloop.image" -}}
{{ .Values.global.image.repository }}:{{ .Values.global.image.tag }}
{{- end -}}

{{- define "edgeloop.commonEnv" -}}
- name: EDGELOOP_MODE
  value: distributed
- name: EDGELOOP_KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.global.kafkaBootstrapServers | quote }}
- name: EDGELOOP_MQTT_HOST
  value: {{ .Values.global.mqttHost | quote }}
- name: EDGELOOP_MQTT_PORT
  value: {{ .Values.global.mqttPort | quote }}
- name: EDGELOOP_DATA_DIR
  value: /var/lib/edgeloop
- name: EDGELOOP_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.global.databaseSecret }}
      key: databaseUrl
{{- end -}}


{{- /* In-cluster base URLs of the release's services (their Service DNS names). */ -}}
{{- define "edgeloop.registryUrl" -}}
http://{{ .Release.Name }}-registry:{{ .Values.registry.port }}
{{- end -}}

{{- define "edgeloop.ingestUrl" -}}
http://{{ .Release.Name }}-ingest:{{ .Values.ingest.port }}
{{- end -}}
