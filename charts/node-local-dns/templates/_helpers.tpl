{{/* The Corefile template: the shipped one (or values.corefile), the extra
server blocks appended, the cluster forward's protocol and the cache options
applied. Placeholders are left for node-cache to fill. */}}
{{- define "node-local-dns.corefile" -}}
{{- $c := .Values.corefile | default (.Files.Get "files/Corefile.tmpl") -}}
{{- if ne .Values.upstreamProtocol "force_tcp" -}}
{{- $c = regexReplaceAll "(?m)^( *)force_tcp$" $c (printf "${1}%s" .Values.upstreamProtocol) -}}
{{- end -}}
{{- if or .Values.cache.serveStale .Values.cache.prefetch -}}
{{- $opts := list -}}
{{- with .Values.cache.serveStale }}{{ $opts = append $opts (printf "serve_stale %s" .) }}{{ end -}}
{{- with .Values.cache.prefetch }}{{ $opts = append $opts (printf "prefetch %v" .) }}{{ end -}}
{{- $c = regexReplaceAll "(?m)^( *)cache ([0-9]+)$" $c "${1}cache ${2} {\n${1}}" -}}
{{- $c = regexReplaceAll "(?m)^( *)cache( [0-9]+)? \\{$" $c (printf "${1}cache${2} {\n${1}    %s" (join "\n${1}    " $opts)) -}}
{{- end -}}
{{- with .Values.extraServerBlocks }}{{ $c = printf "%s%s" $c . }}{{ end -}}
{{- $c -}}
{{- end -}}
