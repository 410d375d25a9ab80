{{/*
flashpv.image: an image reference from {repository, tag, digest}; a digest
wins over the tag.
*/}}
{{- define "flashpv.image" -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ required (printf "image %s needs a tag or a digest" .repository) .tag }}
{{- end -}}
{{- end -}}

{{/*
flashpv.labels: the labels Helm's tooling expects on every object of the
release, beside the objects' own (app.kubernetes.io/name, as in the
kustomize base). Pod templates and selectors do not carry them.
*/}}
{{- define "flashpv.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: flashpv
{{- end -}}

{{/*
flashpv.suffix: "" for the node group "default", else "-NAME": the group's
objects are flashpv-node-NAME and flashpv-pools-NAME.
*/}}
{{- define "flashpv.suffix" -}}
{{- if ne .name "default" }}-{{ .name }}{{ end -}}
{{- end -}}

{{/*
flashpv.pool: one line of the pools file (one --pool value) from a pool of
values.yaml; see the pool syntax in deploy/kubernetes/configmap-pools.yaml.
*/}}
{{- define "flashpv.pool" -}}
{{- $p := . -}}
{{- $type := default "image" $p.type -}}
{{- if not (regexMatch "^[a-z0-9-]{1,32}$" (toString $p.name)) -}}
{{- fail (printf "pool name %q: lower-case letters, digits and '-', at most 32" (toString $p.name)) -}}
{{- end -}}
{{- if or (eq $type "image") (eq $type "quota") -}}
{{- $path := required (printf "pool %s: an %s pool needs a path" $p.name $type) $p.path -}}
{{- if not (hasPrefix "/var/lib/flashpv/" $path) -}}
{{- fail (printf "pool %s: path %s must lie below /var/lib/flashpv/, where the group's hostPath is mounted" $p.name $path) -}}
{{- end -}}
{{- if or $p.volumeGroup $p.thinPool $p.overprovision $p.stripes $p.stripeSize -}}
{{- fail (printf "pool %s: volumeGroup, thinPool, overprovision, stripes and stripeSize are for lvm pools" $p.name) -}}
{{- end -}}
{{ $p.name }}={{ if eq $type "quota" }}quota:{{ end }}{{ $path }}
{{- else if eq $type "lvm" -}}
{{ $p.name }}=lvm:{{ required (printf "pool %s: an lvm pool needs a volumeGroup" $p.name) $p.volumeGroup }}
{{- with $p.thinPool }},thin={{ . }}{{ end }}
{{- with $p.overprovision }},overprovision={{ . }}{{ end }}
{{- with $p.stripes }},stripes={{ . }}{{ end }}
{{- with $p.stripeSize }},stripesize={{ . }}{{ end }}
{{- else -}}
{{- fail (printf "pool %s: type %q, want image, quota or lvm" $p.name $type) -}}
{{- end -}}
{{- with $p.reserve }},reserve={{ . }}{{ end -}}
{{- end -}}


{{/*
flashpv.rules: the rules of a Role or ClusterRole of the kustomize base
(files/kubernetes links to deploy/kubernetes), so that the chart grants
exactly what the base grants. Call with (list $ "PATH").
*/}}
{{- define "flashpv.rules" -}}
{{- $root := index . 0 -}}
{{- $path := printf "files/kubernetes/%s" (index . 1) -}}
{{- $rules := ($root.Files.Get $path | fromYaml).rules -}}
{{- if not $rules }}{{ fail (printf "%s: no rules" $path) }}{{ end -}}
{{ toYaml $rules }}
{{- end -}}
