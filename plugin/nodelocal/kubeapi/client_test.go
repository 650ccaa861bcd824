package kubeapi

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAPIServer serves one Node's GET, its status's strategic merge patch of
// conditions, as the API server merges them (by type), and a JSON patch of
// its taints, behind a bearer token.
type fakeAPIServer struct {
	mu         sync.Mutex
	token      string
	node       string
	conditions []Condition
	taints     []Taint
	version    int // the node's resourceVersion
	patches    int
	refuse     int // answer this status to every patch
}

func (f *fakeAPIServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		writeStatus(w, http.StatusUnauthorized, "Unauthorized")
		return
	}
	path := "/api/v1/nodes/" + f.node
	switch {
	case r.Method == http.MethodGet && r.URL.Path == path:
		var n node
		n.Metadata.ResourceVersion = strconv.Itoa(f.version)
		n.Spec.Taints = f.taints
		n.Status.Conditions = f.conditions
		json.NewEncoder(w).Encode(n)
	case r.Method == http.MethodPatch && r.URL.Path == path:
		var ops []struct {
			Op, Path string
			Value    json.RawMessage
		}
		if r.Header.Get("Content-Type") != "application/json-patch+json" || json.NewDecoder(r.Body).Decode(&ops) != nil {
			writeStatus(w, http.StatusBadRequest, "want a JSON patch")
			return
		}
		for _, op := range ops {
			switch {
			case op.Op == "test" && op.Path == "/metadata/resourceVersion":
				if string(op.Value) != strconv.Quote(strconv.Itoa(f.version)) {
					writeStatus(w, http.StatusUnprocessableEntity, "the test operation failed")
					return
				}
			case op.Op == "replace" && op.Path == "/spec/taints":
				json.Unmarshal(op.Value, &f.taints)
			default:
				writeStatus(w, http.StatusUnprocessableEntity, "unexpected operation "+op.Op+" "+op.Path)
				return
			}
		}
		f.version++
		f.patches++
		w.Write([]byte("{}"))
	case r.Method == http.MethodPatch && r.URL.Path == path+"/status":
		if r.Header.Get("Content-Type") != "application/strategic-merge-patch+json" {
			writeStatus(w, http.StatusUnsupportedMediaType, "want a strategic merge patch")
			return
		}
		if f.refuse != 0 {
			writeStatus(w, f.refuse, `nodes "`+f.node+`" is forbidden`)
			return
		}
		var patch struct {
			Status struct {
				Conditions []map[string]any `json:"conditions"`
			} `json:"status"`
		}
		if err := json.NewDecoder(r.Body).Decode(&patch); err != nil {
			writeStatus(w, http.StatusBadRequest, err.Error())
			return
		}
		f.patches++
		for _, c := range patch.Status.Conditions {
			kind, _ := c["type"].(string)
			kept := f.conditions[:0]
			for _, old := range f.conditions {
				if old.Type != kind {
					kept = append(kept, old)
				}
			}
			f.conditions = kept
			raw, _ := json.Marshal(c)
			var cond Condition
			json.Unmarshal(raw, &cond)
			f.conditions = append(f.conditions, cond)
		}
		w.Write([]byte("{}"))
	default:
		writeStatus(w, http.StatusNotFound, "not found")
	}
}

func writeStatus(w http.ResponseWriter, code int, message string) {
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "message": message, "code": code})
}

// inCluster starts the fake API server over TLS and returns a client made
// as in a pod: from the environment and a ServiceAccount directory.
func inCluster(t *testing.T, f *fakeAPIServer) (*Client, string) {
	t.Helper()
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	tokenFile := filepath.Join(dir, "token")
	for name, data := range map[string][]byte{"ca.crt": ca, "token": []byte(f.token + "\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	u, _ := url.Parse(srv.URL)
	env := map[string]string{"KUBERNETES_SERVICE_HOST": u.Hostname(), "KUBERNETES_SERVICE_PORT": u.Port()}
	c, err := InCluster(func(k string) string { return env[k] }, dir)
	if err != nil {
		t.Fatal(err)
	}
	return c, tokenFile
}

func TestSetACondition(t *testing.T) {
	f := &fakeAPIServer{token: "t1", node: "node-a", conditions: []Condition{{Type: "Ready", Status: "True"}}}
	c, _ := inCluster(t, f)
	ctx := context.Background()
	if _, found, err := c.NodeCondition(ctx, "node-a", "NodeLocalDNSReady"); err != nil || found {
		t.Fatalf("before: found %v, %v", found, err)
	}
	at := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	want := Condition{Type: "NodeLocalDNSReady", Status: "True", Reason: "NodeLocalDNSServing", Message: "m", LastHeartbeatTime: at, LastTransitionTime: at}
	if err := c.SetNodeCondition(ctx, "node-a", want); err != nil {
		t.Fatal(err)
	}
	got, found, err := c.NodeCondition(ctx, "node-a", "NodeLocalDNSReady")
	if err != nil || !found || got != want {
		t.Fatalf("read back %+v (found %v, %v), want %+v", got, found, err, want)
	}
	if ready, _, _ := c.NodeCondition(ctx, "node-a", "Ready"); ready.Status != "True" {
		t.Fatalf("kubelet's Ready condition changed: %+v", ready)
	}
}

// TestTokenReadEachTime: kubelet rotates the bound token in place.
func TestTokenReadEachTime(t *testing.T) {
	f := &fakeAPIServer{token: "t1", node: "node-a"}
	c, tokenFile := inCluster(t, f)
	f.mu.Lock()
	f.token = "t2"
	f.mu.Unlock()
	if err := os.WriteFile(tokenFile, []byte("t2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.NodeCondition(context.Background(), "node-a", "x"); err != nil {
		t.Fatalf("with the rotated token: %v", err)
	}
}

func TestErrorsSayWhatToDo(t *testing.T) {
	f := &fakeAPIServer{token: "t1", node: "node-a", refuse: http.StatusForbidden}
	c, _ := inCluster(t, f)
	err := c.SetNodeCondition(context.Background(), "node-a", Condition{Type: "NodeLocalDNSReady", Status: "True"})
	var status *StatusError
	if !errors.As(err, &status) || status.Code != http.StatusForbidden || status.Retriable() ||
		!strings.Contains(err.Error(), `nodes "node-a" is forbidden`) || !strings.Contains(err.Error(), "lacks the permission") {
		t.Fatalf("a refusal: %v", err)
	}
	if _, err := InCluster(func(string) string { return "" }, t.TempDir()); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Fatalf("outside a pod: %v", err)
	}
	env := map[string]string{"KUBERNETES_SERVICE_HOST": "198.18.0.1", "KUBERNETES_SERVICE_PORT": "443"}
	if _, err := InCluster(func(k string) string { return env[k] }, t.TempDir()); err == nil || !strings.Contains(err.Error(), "automountServiceAccountToken") {
		t.Fatalf("without a mounted token: %v", err)
	}
}

// TestRemoveATaint: only the taints of the key go, the others stay.
func TestRemoveATaint(t *testing.T) {
	const key = "node-local-dns.kubernetes.io/not-ready"
	f := &fakeAPIServer{token: "t1", node: "node-a", version: 7,
		taints: []Taint{{Key: "dedicated", Value: "infra", Effect: "NoSchedule"}, {Key: key, Effect: "NoSchedule"}}}
	c, _ := inCluster(t, f)
	removed, err := c.RemoveNodeTaint(context.Background(), "node-a", key)
	if err != nil || !removed {
		t.Fatalf("removed %v, %v", removed, err)
	}
	if len(f.taints) != 1 || f.taints[0].Key != "dedicated" {
		t.Fatalf("taints left %+v, want the other one", f.taints)
	}
	removed, err = c.RemoveNodeTaint(context.Background(), "node-a", key)
	if err != nil || removed || f.patches != 1 {
		t.Fatalf("again: removed %v, %v, %d patches; want nothing to do", removed, err, f.patches)
	}
}
