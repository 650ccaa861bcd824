# node-cache: CoreDNS with the nodelocal plugin. `make help` lists the targets.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X github.com/coredns/coredns/coremain.GitCommit=$(COMMIT)
# The image's name and tag are the DaemonSet's: `make image` builds what the manifests deploy.
IMAGE     ?= $(shell sed -n 's/^ *image: *//p' manifests/base/daemonset.yaml)
# The commit's time, for a reproducible image.
CREATED   ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
TEST_TIMEOUT ?= 40m

.PHONY: help deps bench-deps build generate manifests test unit-test demo bench bench-outage pgo image lint clean check-generated cluster-build cluster-up cluster-add-worker cluster-remove-worker cluster-down demo-real-node bench-cluster

# Debian packages the simulated node needs, by the command that shows each.
DEPS := ip:iproute2 sysctl:procps iptables-legacy:iptables nft:nftables conntrack:conntrack setpriv:util-linux \
	runc:runc skopeo:skopeo /usr/lib/cni/bridge:containernetworking-plugins

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install what the simulated node needs (Debian, as root), when missing
	@missing=""; for d in $(DEPS); do command -v $${d%%:*} >/dev/null || missing="$$missing $${d#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (install them as root; privileged tests will skip)"; exit 0; fi; \
	echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing

GOBUILD   = CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'
# The image's architecture: amd64, or arm64 (cross-compiled, Debian's arm64 packages).
ARCH      ?= amd64
IMAGE_ARCHIVE = bin/node-cache-image$(if $(filter-out amd64,$(ARCH)),-$(ARCH)).tar

build: ## build bin/node-cache (version and commit stamped)
	$(GOBUILD) -o bin/node-cache ./build

generate: ## regenerate the directive list and imports from plugin.cfg (node-cache's, and the bench's reference build)
	$(GO) generate ./build/... ./test/cmd/coredns-plugincfg

manifests: ## regenerate the ConfigMap from corefile.tmpl, manifests/nodelocaldns.yaml, and the chart's copies (Corefile template, alerts, dashboard)
	$(GO) run ./manifests/gen

check-generated: generate manifests ## fail when generated files are stale
	git diff --exit-code -- build/zdirectives.go build/zplugin.go test/cmd/coredns-plugincfg/ manifests/ charts/

# test/chart is a module of its own (helm's and Prometheus's dependencies).
# One package at a time: the simulated and the real node's tests measure
# timings that a second node booting beside them on 2 cores would disturb.
test: deps build cluster-build ## unit tests and the privileged end-to-end tests, the real node's among them (run as root)
	$(GO) test -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./...
	cd test/chart && $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

unit-test: ## unit tests only (no root needed)
	$(GO) test -count=1 -short ./...
	cd test/chart && $(GO) test -count=1 -short ./...

demo: deps build ## run node-cache in a simulated node and show what it does (root)
	$(GO) run ./test/cmd/demo -node-cache bin/node-cache

demo-real-node: deps ## the same on a real node: kubelet runs the DaemonSet of manifests/base (PROXY_MODE=iptables|nftables; root)
	$(GO) run ./test/cmd/demo -real-node -mode $(PROXY_MODE)

PROXY_MODE ?= iptables
CLUSTER_DNS ?=
WORKERS ?= 0

cluster-build: ## build the real node's programs (Kubernetes, containerd, etcd, CoreDNS) and the image scanner (syft) into the user cache, once per version
	$(GO) run ./test/cmd/cluster build

cluster-up: deps ## boot the real node (PROXY_MODE=iptables|nftables, CLUSTER_DNS=169.254.20.10 for kubelet's clusterDNS on the link-local IP, WORKERS=N nodes joining it) and leave it running; prints how to use it (root)
	@$(GO) run ./test/cmd/cluster up -proxy-mode $(PROXY_MODE) -cluster-dns "$(CLUSTER_DNS)" -workers $(WORKERS)

cluster-add-worker: ## one more worker joins the cluster of cluster-up (TAINT=key:Effect to register it with a taint; root)
	@$(GO) run ./test/cmd/cluster add-worker $(if $(TAINT),-taint $(TAINT))

cluster-remove-worker: ## the worker NODE of cluster-up ends as a terminated instance, its Node deleted (root)
	@$(GO) run ./test/cmd/cluster remove-worker $(NODE)

cluster-down: ## remove the real node of cluster-up and everything it made (root)
	@$(GO) run ./test/cmd/cluster down

bench-deps: deps
	@command -v unbound >/dev/null && command -v dnsmasq >/dev/null && command -v dnsperf >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unbound dnsmasq dnsperf)

bench: bench-deps build ## side-by-side benchmarks, markdown tables in bench-results.md (root)
	$(GO) run ./test/cmd/bench -node-cache bin/node-cache -out bench-results.md

bench-outage: bench-deps build ## kube-dns silent for 5 minutes: node-cache and the upstream-style Corefile side by side (root)
	$(GO) run ./test/cmd/bench -node-cache bin/node-cache -sections "kube-dns down" -outage 5m -out bench-outage.md

bench-cluster: deps cluster-build image ## the lifecycle scenarios on a real node and on a fleet (3 workers), each kube-proxy mode, with the upstream-style DaemonSet; draws bench-rollouts.svg and bench-fleet-rollouts.svg (SECTIONS=fleet: the fleet only; SECTIONS=storm: a fleet rollout's cost to kube-dns, successors warm and cold; root)
	$(GO) run ./test/cmd/bench -node-cache bin/node-cache -sections "$(or $(SECTIONS),real)" -out bench-cluster.md -svg bench-rollouts.svg -fleet-svg bench-fleet-rollouts.svg

pgo: bench-deps build ## profile node-cache under the bench's load into build/default.pgo, which go build optimises with (root)
	$(GO) run ./test/cmd/bench -node-cache bin/node-cache -profile build/default.pgo

image: ## write the image as an OCI archive, bin/node-cache-image.tar (ARCH=arm64: -arm64.tar); no container engine, Debian's apt-get and dpkg-deb; every package checked against its pinned sha256; its SPDX SBOM beside it (UNPINNED=1, for tests: take what Debian serves when a pinned version is gone)
	GOARCH=$(ARCH) $(GOBUILD) -o bin/node-cache-linux-$(ARCH) ./build
	$(GO) run ./build/imagebuild -arch $(ARCH) -binary bin/node-cache-linux-$(ARCH) -image '$(IMAGE)' \
		-version '$(VERSION)' -revision '$(COMMIT)' -created '$(CREATED)' -out $(IMAGE_ARCHIVE) $(if $(UNPINNED),-unpinned)

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd test/chart && $(GO) vet ./...

clean: ## remove build output
	rm -rf bin bench-results.md bench-outage.md bench-cluster.md bench-rollouts.svg bench-fleet-rollouts.svg
