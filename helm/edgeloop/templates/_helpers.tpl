{{- define "edgeloop.labels" -}}
app.kubernetes.io/part-of: edgeloop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | default .Chart.Version | quote }}
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
{{- with .Values.observability.otlpEndpoint }}
- name: EDGELOOP_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: EDGELOOP_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.global.databaseSecret }}
      key: databaseUrl
{{- with .Values.global.kafka }}
- name: EDGELOOP_KAFKA_SECURITY_PROTOCOL
  value: {{ .securityProtocol | quote }}
{{- if hasPrefix "SASL_" .securityProtocol }}
- name: EDGELOOP_KAFKA_SASL_MECHANISM
  value: {{ .saslMechanism | quote }}
- name: EDGELOOP_KAFKA_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "global.kafka.credentialsSecret: name the Secret with the Kafka user (username, password)" .credentialsSecret }}
      key: username
- name: EDGELOOP_KAFKA_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .credentialsSecret }}
      key: password
{{- end }}
{{- end }}
{{- if .Values.global.tlsCaSecret }}
- name: EDGELOOP_KAFKA_TLS_CA_FILE
  value: /etc/edgeloop/tls-ca/ca.crt
{{- end }}
{{- with .Values.global.blobStore }}
- name: EDGELOOP_BLOB_STORE
  value: {{ .type | quote }}
{{- if eq .type "s3" }}
- name: EDGELOOP_S3_ENDPOINT_URL
  value: {{ .s3.endpoint | quote }}
- name: EDGELOOP_S3_BUCKET
  value: {{ required "global.blobStore.s3.bucket: name the bucket of the pictures" .s3.bucket | quote }}
- name: EDGELOOP_S3_REGION
  value: {{ .s3.region | quote }}
{{- with .s3.credentialsSecret }}
- name: EDGELOOP_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: accessKeyId
- name: EDGELOOP_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: secretAccessKey
{{- end }}
{{- end }}
{{- end }}
{{- end -}}


{{- /* In-cluster base URLs of the release's services (their Service DNS names). */ -}}
{{- define "edgeloop.registryUrl" -}}
http://{{ .Release.Name }}-registry:{{ .Values.registry.port }}
{{- end -}}

{{- define "edgeloop.ingestUrl" -}}
http://{{ .Release.Name }}-ingest:{{ .Values.ingest.port }}
{{- end -}}


{{- /* API tokens (docs/security.md). The Secret with the store and each service's token. */ -}}
{{- define "edgeloop.apiTokensSecret" -}}
{{ .Values.apiAuth.existingSecret | default (printf "%s-api-tokens" .Release.Name) }}
{{- end -}}

{{- /* The ids of the chart's service tokens: each service, and the edge agent of each site (edge-<site>). */ -}}
{{- define "edgeloop.apiTokenIds" -}}
{{- $ids := list "ingest" "inference-gateway" "registry" "trainer" "drift" "deployer" "model-server" -}}
{{- range $site := splitList "," (.Values.edgeAgents.sites | default .Values.deployer.nodeGroups) -}}
{{- if trim $site }}{{ $ids = append $ids (printf "edge-%s" (trim $site)) }}{{ end -}}
{{- end -}}
{{- join "," $ids -}}
{{- end -}}

{{- /* A service's API auth variables: (dict "root" $ "id" "<token id>"); its own token from the Secret. */ -}}
{{- define "edgeloop.apiAuthEnv" -}}
{{- $a := .root.Values.apiAuth -}}
- name: EDGELOOP_API_AUTH
  value: {{ $a.mode | quote }}
{{- if eq $a.mode "required" }}
- name: EDGELOOP_API_TOKENS_FILE
  value: /etc/edgeloop/api-tokens/tokens.json{{ if $a.extraTokensSecret }},/etc/edgeloop/api-tokens-extra/tokens.json{{ end }}
- name: EDGELOOP_API_AUTH_OPEN_METRICS
  value: {{ $a.openMetrics | quote }}
- name: EDGELOOP_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "edgeloop.apiTokensSecret" .root }}
      key: {{ .id }}.token
{{- end }}
{{- end -}}

{{- /* The store, mounted (a Secret volume without subPath: an update reaches the pod and is read at once). */ -}}
{{- define "edgeloop.apiAuthMounts" -}}
{{- if eq .Values.apiAuth.mode "required" }}
- {name: api-tokens, mountPath: /etc/edgeloop/api-tokens, readOnly: true}
{{- if .Values.apiAuth.extraTokensSecret }}
- {name: api-tokens-extra, mountPath: /etc/edgeloop/api-tokens-extra, readOnly: true}
{{- end }}
{{- end }}
{{- end -}}

{{- define "edgeloop.apiAuthVolumes" -}}
{{- if eq .Values.apiAuth.mode "required" }}
- name: api-tokens   # the hashed store only: no service sees another's token
  secret:
    secretName: {{ include "edgeloop.apiTokensSecret" . }}
    items: [{key: tokens.json, path: tokens.json}]
{{- with .Values.apiAuth.extraTokensSecret }}
- name: api-tokens-extra
  secret:
    secretName: {{ . }}
    items: [{key: tokens.json, path: tokens.json}]
{{- end }}
{{- end }}
{{- end -}}


{{- /* The CA of Kafka's and PostgreSQL's certificates (docs/security.md), for the services that reach them. */ -}}
{{- define "edgeloop.tlsCaMounts" -}}
{{- if .Values.global.tlsCaSecret }}
- {name: tls-ca, mountPath: /etc/edgeloop/tls-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "edgeloop.tlsCaVolumes" -}}
{{- if .Values.global.tlsCaSecret }}
- name: tls-ca
  secret:
    secretName: {{ .Values.global.tlsCaSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end -}}


{{- /* MQTT identities and TLS (docs/security.md, "Device identity on MQTT"). */ -}}
{{- define "edgeloop.mqttCredentialsSecret" -}}
{{ .Values.global.mqtt.credentialsSecret | default (printf "%s-mqtt-credentials" .Release.Name) }}
{{- end -}}

{{- /* The identities the chart's services log in with: ingest, the gateway, the edge agent of each site. */ -}}
{{- define "edgeloop.mqttIdentities" -}}
{{- $ids := list "ingest" "inference-gateway" -}}
{{- range $site := splitList "," (.Values.edgeAgents.sites | default .Values.deployer.nodeGroups) -}}
{{- if trim $site }}{{ $ids = append $ids (printf "edge-%s" (trim $site)) }}{{ end -}}
{{- end -}}
{{- join "," $ids -}}
{{- end -}}

{{- define "edgeloop.mqttCaSecret" -}}
{{ required "global.mqtt.tls is on: name the Secret with the CA of the MQTT broker's certificate (key ca.crt) in global.mqtt.caSecret (or global.tlsCaSecret), or set global.mqtt.tls=false" (.Values.global.mqtt.caSecret | default .Values.global.tlsCaSecret) }}
{{- end -}}

{{- /* A service's identity on the broker, and TLS: (dict "root" $ "id" "<username>"). */ -}}
{{- define "edgeloop.mqttEnv" -}}
- name: EDGELOOP_MQTT_USERNAME
  value: {{ .id | quote }}
- name: EDGELOOP_MQTT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "edgeloop.mqttCredentialsSecret" .root }}
      key: {{ .id }}.password
{{- if .root.Values.global.mqtt.tls }}
- name: EDGELOOP_MQTT_TLS
  value: "true"
- name: EDGELOOP_MQTT_TLS_CA_FILE
  value: /etc/edgeloop/mqtt-ca/ca.crt
{{- end }}
{{- end -}}

{{- define "edgeloop.mqttMounts" -}}
{{- if .Values.global.mqtt.tls }}
- {name: mqtt-ca, mountPath: /etc/edgeloop/mqtt-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "edgeloop.mqttVolumes" -}}
{{- if .Values.global.mqtt.tls }}
- name: mqtt-ca
  secret:
    secretName: {{ include "edgeloop.mqttCaSecret" . }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end -}}


{{- /* securityContext (issue 12, docs/security.md): every pod runs as the image's numeric non-root user under the
runtime's default seccomp profile; every container (init containers, jobs, test pods too) without privilege
escalation, capabilities or a writable root filesystem: what it writes goes to a mounted volume, temporary files
to /tmp (edgeloop.tmpMount). The global defaults, each key of a component's own podSecurityContext/securityContext
replacing the global one (a shallow merge: `readOnlyRootFilesystem: false` does override). (dict "root" $ "own" {}) */ -}}
{{- define "edgeloop.podSecurityContext" -}}
{{- $context := deepCopy (.root.Values.global.podSecurityContext | default (dict)) -}}
{{- range $key, $value := .own | default (dict) }}{{ $_ := set $context $key $value }}{{ end -}}
{{- toYaml $context -}}
{{- end -}}

{{- define "edgeloop.securityContext" -}}
{{- $context := deepCopy (.root.Values.global.securityContext | default (dict)) -}}
{{- range $key, $value := .own | default (dict) }}{{ $_ := set $context $key $value }}{{ end -}}
{{- toYaml $context -}}
{{- end -}}

{{- /* A writable /tmp on a read-only root (Python's tempfile, TensorFlow, uvicorn), emptied with the pod. */ -}}
{{- define "edgeloop.tmpMount" -}}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "edgeloop.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end -}}


{{- /* Where the cloud-side pods go (every pod but the model server and the edge agents, which go to their node
group): global.nodeSelector and global.tolerations. */ -}}
{{- define "edgeloop.cloudPlacement" -}}
{{- with .Values.global.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.global.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
