package harness

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestDecodeYAML(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		kinds []string
		err   bool
	}{
		{"empty", "", nil, false},
		{"separators only", "---\n---\n", nil, false},
		{"two documents", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# comment\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: b}\n", []string{"Namespace", "ServiceAccount"}, false},
		{"json", `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}`, []string{"ConfigMap"}, false},
		{"broken", "kind: [\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := DecodeYAML([]byte(tc.in))
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			var kinds []string
			for _, o := range objs {
				kinds = append(kinds, o.GetKind())
			}
			if strings.Join(kinds, ",") != strings.Join(tc.kinds, ",") {
				t.Errorf("kinds = %v, want %v", kinds, tc.kinds)
			}
		})
	}
}

func TestPointWebhooksAt(t *testing.T) {
	objs, err := DecodeYAML([]byte(`apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: x}
webhooks:
  - name: a.example
    failurePolicy: Fail
    clientConfig:
      service: {name: s, namespace: n, path: /mutate/a, port: 443}
  - name: b.example
    clientConfig:
      service: {name: s, namespace: n, path: /mutate/b}
`))
	if err != nil {
		t.Fatal(err)
	}
	mwc := objs[0]
	if err := PointWebhooksAt(mwc, "https://127.0.0.1:1234", []byte("CA")); err != nil {
		t.Fatal(err)
	}
	hooks, _, _ := unstructured.NestedSlice(mwc.Object, "webhooks")
	want := []string{"https://127.0.0.1:1234/mutate/a", "https://127.0.0.1:1234/mutate/b"}
	for i, h := range hooks {
		m := h.(map[string]any)
		cc := m["clientConfig"].(map[string]any)
		if cc["url"] != want[i] || cc["caBundle"] != base64.StdEncoding.EncodeToString([]byte("CA")) || cc["service"] != nil {
			t.Errorf("webhooks[%d].clientConfig = %v, want url %s, caBundle, no service", i, cc, want[i])
		}
	}
	if hooks[0].(map[string]any)["failurePolicy"] != "Fail" {
		t.Error("other fields must stay as rendered")
	}

	noPath, _ := DecodeYAML([]byte("kind: MutatingWebhookConfiguration\nwebhooks:\n- name: c\n  clientConfig: {url: https://x}\n"))
	if err := PointWebhooksAt(noPath[0], "https://y", nil); err == nil {
		t.Error("a webhook without clientConfig.service.path must be an error")
	}
}

func TestReviewsFromLog(t *testing.T) {
	w := &Webhook{log: &logBuffer{keep: true}}
	_, _ = io.WriteString(w.log, `##### harness: starting
{"time":"t","level":"INFO","msg":"serving"}
not json
{"msg":"review","uid":"u1","kind":"ServiceAccount","namespace":"ns","name":"sa","operation":"CREATE","dryRun":true,"decision":"allowed","patchOps":2,"duration":1234}
{"msg":"review","uid":"u2","kind":"Pod","namespace":"ns","name":"","operation":"CREATE","dryRun":false,"decision":"denied","patchOps":0,"duration":"5ms"}
`)
	got := w.Reviews()
	if len(got) != 2 {
		t.Fatalf("got %d reviews, want 2: %+v", len(got), got)
	}
	r := got[0]
	if r.UID != "u1" || r.Kind != "ServiceAccount" || r.Namespace != "ns" || r.Name != "sa" || r.Operation != "CREATE" ||
		!r.DryRun || r.Decision != "allowed" || r.PatchOps != 2 || r.Duration != "1234" {
		t.Errorf("first review = %+v", r)
	}
	if got[1].DryRun || got[1].Decision != "denied" || got[1].Duration != "5ms" {
		t.Errorf("second review = %+v", got[1])
	}
	found, err := w.WaitForReviewLog(time.Second, func(r ReviewLog) bool { return r.UID == "u2" })
	if err != nil || found.Kind != "Pod" {
		t.Errorf("WaitForReviewLog = %+v, %v", found, err)
	}
	if _, err := w.WaitForReviewLog(200*time.Millisecond, func(r ReviewLog) bool { return r.UID == "none" }); err == nil {
		t.Error("WaitForReviewLog must time out without a match")
	}
}

// testCerts writes a CA and a 127.0.0.1 serving certificate, as `credential-webhook certs` does.
func testCerts(t *testing.T) (dir string, serving tls.Certificate) {
	t.Helper()
	ca, err := newCertAuthority("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.issue(certSpec{commonName: "serving", hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	if err := writeFiles(map[string][]byte{
		filepath.Join(dir, "ca.crt"): ca.pem, filepath.Join(dir, "tls.crt"): certPEM, filepath.Join(dir, "tls.key"): keyPEM,
	}); err != nil {
		t.Fatal(err)
	}
	serving, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return dir, serving
}

// replica answers AdmissionReviews allowing them, with one patch op, naming itself in a warning.
func replica(t *testing.T, name string, cert tls.Certificate) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rev map[string]any
		_ = json.NewDecoder(r.Body).Decode(&rev)
		uid := rev["request"].(map[string]any)["uid"]
		patch := base64.StdEncoding.EncodeToString([]byte(`[{"op":"add","path":"/metadata/labels","value":{}}]`))
		_ = json.NewEncoder(w).Encode(map[string]any{
			"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
			"response": map[string]any{"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch, "warnings": []string{name}},
		})
	}))
	s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func TestFrontendRoundRobinFailoverAndDrop(t *testing.T) {
	dir, cert := testCerts(t)
	f, err := newFrontend(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.close)
	caPEM, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	send := func(uid string) (int, error) {
		body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"` + uid +
			`","kind":{"group":"","version":"v1","kind":"ServiceAccount"},"namespace":"ns","name":"sa-` + uid +
			`","operation":"CREATE","dryRun":true,"userInfo":{"username":"alice","groups":["g"]}}}`
		resp, err := client.Post(f.url+"/mutate/serviceaccounts?timeout=10s", "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}

	// No replica: the connection is dropped, as for a Service without endpoints.
	if _, err := send("0"); err == nil {
		t.Fatal("with no replica the call must fail at the transport")
	}

	a, b := replica(t, "a", cert), replica(t, "b", cert)
	f.add(backend{name: "a", url: a.URL})
	f.add(backend{name: "b", url: b.URL})
	for _, uid := range []string{"1", "2", "3", "4"} {
		if code, err := send(uid); err != nil || code != http.StatusOK {
			t.Fatalf("send %s: %d %v", uid, code, err)
		}
	}
	// a goes away without being removed (killed between list and dial): b takes over.
	a.Close()
	for _, uid := range []string{"5", "6"} {
		if code, err := send(uid); err != nil || code != http.StatusOK {
			t.Fatalf("send %s after a died: %d %v", uid, code, err)
		}
	}

	reviews, _ := f.snapshot()
	if len(reviews) != 7 {
		t.Fatalf("recorded %d reviews, want 7", len(reviews))
	}
	if reviews[0].Err == "" || reviews[0].Backend != "" {
		t.Errorf("dropped review = %+v, want Err and no backend", reviews[0])
	}
	per := map[string]int{}
	for _, r := range reviews[1:5] {
		per[r.Backend]++
	}
	if per["a"] != 2 || per["b"] != 2 {
		t.Errorf("round robin per replica = %v, want 2 and 2", per)
	}
	for _, r := range reviews[5:] {
		if r.Backend != "b" || r.Err != "" {
			t.Errorf("after a died: backend %q err %q, want b", r.Backend, r.Err)
		}
	}
	r := reviews[1]
	if r.UID != "1" || r.Kind != "ServiceAccount" || r.Namespace != "ns" || r.Name != "sa-1" || r.Operation != "CREATE" ||
		!r.DryRun || r.User != "alice" || r.Path != "/mutate/serviceaccounts" || !r.Allowed || r.PatchOps != 1 ||
		r.StatusCode != http.StatusOK || len(r.Warnings) != 1 {
		t.Errorf("recorded review = %+v", r)
	}
	if !json.Valid(r.Request) || !json.Valid(r.Response) || !json.Valid(r.Patch) {
		t.Error("raw request, response and patch must be kept as JSON")
	}
}
