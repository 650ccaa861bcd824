// Package kubeapi is the little of the Kubernetes API that node-cache uses:
// read its Node, patch that Node's status conditions and remove a taint of
// it, as the pod's ServiceAccount, with nothing but net/http and encoding/json (client-go
// would add megabytes to the binary for two requests).
package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ServiceAccountDir is where kubelet mounts the pod's ServiceAccount token
// and the cluster's CA.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// requestTimeout bounds each request: a slow API server holds up nothing
// but the writer that waits for it.
const requestTimeout = 10 * time.Second

// Client talks to one API server with a token read from a file before each
// request: kubelet rotates the pod-bound token in place.
type Client struct {
	base      string // https://host:port
	tokenFile string
	http      *http.Client
}

// InCluster is the client of the API server the pod runs under: the
// kubernetes Service from the environment Kubernetes sets in every pod, the
// ServiceAccount's token and CA from dir (ServiceAccountDir in a pod).
func InCluster(getenv func(string) string, dir string) (*Client, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set: node-cache must run in a pod to talk to the API server")
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("read the cluster's CA: %w (is the ServiceAccount token mounted? automountServiceAccountToken must not be false)", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s holds no PEM certificate", filepath.Join(dir, "ca.crt"))
	}
	return New("https://"+net.JoinHostPort(host, port), filepath.Join(dir, "token"), pool), nil
}

// New is a client of the API server at base, trusting roots.
func New(base, tokenFile string, roots *x509.CertPool) *Client {
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		Proxy:               nil, // the API server is reached directly, whatever the node's proxy variables say
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{base: base, tokenFile: tokenFile, http: &http.Client{Transport: transport, Timeout: requestTimeout}}
}

// Condition is a node condition, as the API has it.
type Condition struct {
	Type               string    `json:"type"`
	Status             string    `json:"status"`
	Reason             string    `json:"reason,omitempty"`
	Message            string    `json:"message,omitempty"`
	LastHeartbeatTime  time.Time `json:"lastHeartbeatTime,omitzero"`
	LastTransitionTime time.Time `json:"lastTransitionTime,omitzero"`
}

// Taint is a node taint, as the API has it.
type Taint struct {
	Key       string     `json:"key"`
	Value     string     `json:"value,omitempty"`
	Effect    string     `json:"effect"`
	TimeAdded *time.Time `json:"timeAdded,omitempty"`
}

// node is what node-cache reads of a Node.
type node struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Spec struct {
		Taints []Taint `json:"taints"`
	} `json:"spec"`
	Status struct {
		Conditions []Condition `json:"conditions"`
	} `json:"status"`
}

// NodeCondition reads the condition of type kind of node; found is false when
// the node has none.
func (c *Client) NodeCondition(ctx context.Context, nodeName, kind string) (cond Condition, found bool, err error) {
	var n node
	if err := c.do(ctx, http.MethodGet, nodePath(nodeName), "", nil, &n); err != nil {
		return Condition{}, false, err
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == kind {
			return cond, true, nil
		}
	}
	return Condition{}, false, nil
}

// SetNodeCondition adds or replaces one condition of node's status, leaving
// the others as they are: a strategic merge patch, whose conditions list
// merges by type.
func (c *Client) SetNodeCondition(ctx context.Context, nodeName string, cond Condition) error {
	patch := map[string]any{"status": map[string]any{"conditions": []Condition{cond}}}
	return c.patchStatus(ctx, nodeName, patch)
}

// RemoveNodeTaint removes the taints with key from node, and reports
// whether there were any. The patch applies only to the version read (a
// JSON patch that tests the resourceVersion): a taint added meanwhile is
// never lost, and the caller retries on a conflict.
func (c *Client) RemoveNodeTaint(ctx context.Context, nodeName, key string) (bool, error) {
	var n node
	if err := c.do(ctx, http.MethodGet, nodePath(nodeName), "", nil, &n); err != nil {
		return false, err
	}
	kept := make([]Taint, 0, len(n.Spec.Taints))
	for _, t := range n.Spec.Taints {
		if t.Key != key {
			kept = append(kept, t)
		}
	}
	if len(kept) == len(n.Spec.Taints) {
		return false, nil
	}
	patch := []map[string]any{
		{"op": "test", "path": "/metadata/resourceVersion", "value": n.Metadata.ResourceVersion},
		{"op": "replace", "path": "/spec/taints", "value": kept},
	}
	body, err := json.Marshal(patch)
	if err != nil {
		return false, err
	}
	return true, c.do(ctx, http.MethodPatch, nodePath(nodeName), "application/json-patch+json", body, nil)
}

func (c *Client) patchStatus(ctx context.Context, nodeName string, patch any) error {
	body, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPatch, nodePath(nodeName)+"/status", "application/strategic-merge-patch+json", body, nil)
}

func nodePath(name string) string { return "/api/v1/nodes/" + url.PathEscape(name) }

// StatusError is an answer of the API server other than success.
type StatusError struct {
	Method, Path string
	Code         int
	Message      string // the Status object's message, or the body
}

func (e *StatusError) Error() string {
	hint := ""
	switch e.Code {
	case http.StatusUnauthorized:
		hint = " (the ServiceAccount token was refused)"
	case http.StatusForbidden:
		hint = " (the ServiceAccount lacks the permission, or an admission policy refused the change)"
	}
	return fmt.Sprintf("%s %s: %d %s%s", e.Method, e.Path, e.Code, e.Message, hint)
}

// Retriable: the request may succeed later (the API server is starting,
// overloaded or in a conflict), as opposed to a refusal.
func (e *StatusError) Retriable() bool {
	return e.Code == http.StatusConflict || e.Code == http.StatusTooManyRequests || e.Code >= 500
}

func (c *Client) do(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	token, err := os.ReadFile(c.tokenFile)
	if err != nil {
		return fmt.Errorf("read the ServiceAccount token: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "node-cache")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var status struct{ Message string }
		if json.Unmarshal(data, &status) != nil || status.Message == "" {
			status.Message = strings.TrimSpace(string(data[:min(len(data), 200)]))
		}
		return &StatusError{Method: method, Path: path, Code: resp.StatusCode, Message: status.Message}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}
