{{/* The Corefile template: the shipped one (or values.corefile), the extra
server blocks appended, the cluster forward's protocol and the caches'
serve_stale and prefetch options set in every zone (or removed with "off").
Placeholders are left for node-cache to fill. */}}
{{- define "node-local-dns.corefile" -}}
{{- $c := .Values.corefile | default (.Files.Get "files/Corefile.tmpl") -}}
{{- if ne .Values.upstreamProtocol "force_tcp" -}}
{{- $c = regexReplaceAll "(?m)^( *)force_tcp$" $c (printf "${1}%s" .Values.upstreamProtocol) -}}
{{- end -}}
{{- range $option, $value := dict "serve_stale" .Values.cache.serveStale "prefetch" .Values.cache.prefetch -}}
{{- if eq $value "off" -}}
{{- $c = regexReplaceAll (printf "(?m)^ *%s .*\n" $option) $c "" -}}
{{- else if $value -}}
{{- $c = regexReplaceAll (printf "(?m)^( *)%s .*$" $option) $c (printf "${1}%s %s" $option $value) -}}
{{- end -}}
{{- end -}}
{{- with .Values.extraServerBlocks }}{{ $c = printf "%s%s" $c . }}{{ end -}}
{{- $c -}}
{{- end -}}
