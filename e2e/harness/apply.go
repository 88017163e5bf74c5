package harness

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
)

// FieldManager is the server-side apply field manager of everything the harness applies.
const FieldManager = "e2e-harness"

// DecodeYAML splits a multi-document YAML (or JSON) stream into objects, skipping empty
// documents.
func DecodeYAML(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 64<<10)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("decode YAML document %d: %w", len(out)+1, err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

// Apply server-side applies every object in a multi-document YAML stream, in order, as cluster
// admin, and returns them as the apiserver stored them. The apiserver validates each against
// its schema (built-in types and installed CRDs alike), so a typo fails here.
func (c *Cluster) Apply(ctx context.Context, manifests []byte) ([]*unstructured.Unstructured, error) {
	objs, err := DecodeYAML(manifests)
	if err != nil {
		return nil, err
	}
	return c.ApplyObjects(ctx, objs...)
}

// ApplyObjects server-side applies objs in order (force, field manager FieldManager).
func (c *Cluster) ApplyObjects(ctx context.Context, objs ...*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	return c.applyWith(ctx, c.Dynamic, objs)
}

func (c *Cluster) applyWith(ctx context.Context, dyn dynamic.Interface, objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	mapper := c.restMapper()
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			// A CRD applied just before: discovery has to be read again.
			mapper.Reset()
			m, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			return out, fmt.Errorf("apply %s %s: no resource for it: %w", gvk.Kind, obj.GetName(), err)
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return out, fmt.Errorf("apply %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		ri := dyn.Resource(m.Resource)
		var res *unstructured.Unstructured
		opts := metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true)}
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ns := obj.GetNamespace()
			if ns == "" {
				ns = "default"
			}
			res, err = ri.Namespace(ns).Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
		} else {
			res, err = ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
		}
		if err != nil {
			return out, fmt.Errorf("apply %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
		out = append(out, res)
	}
	return out, nil
}

func (c *Cluster) restMapper() *restmapper.DeferredDiscoveryRESTMapper {
	dc := discovery.NewDiscoveryClientForConfigOrDie(c.Config)
	return restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
}

// Kubectl runs the v1.37.2 kubectl as cluster admin and returns its standard output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Binaries, "kubectl"), append([]string{"--kubeconfig", c.AdminKubeconfig}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// RenderManifests renders the kustomize base manifests/ with the built kubectl (which embeds
// kustomize).
func (c *Cluster) RenderManifests(ctx context.Context) ([]*unstructured.Unstructured, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Binaries, "kubectl"), "kustomize", filepath.Join(c.RepoRoot, "manifests"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kubectl kustomize manifests/: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return DecodeYAML(out)
}

// Token returns a TokenRequest token for a ServiceAccount (default audiences: the apiserver).
func (c *Cluster) Token(ctx context.Context, namespace, name string, ttl time.Duration, audiences ...string) (string, error) {
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: ptr.To(int64(ttl.Seconds()))},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// ---------------------------------------------------------------------------------------------
// cert-manager CRDs and the project's manifests.

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCertManagerCRDs applies cert-manager's CRDs from its Go module (deploy/crds), so the
// project's Issuer and Certificate are validated against the real schema.
func (c *Cluster) installCertManagerCRDs(ctx context.Context) error {
	dir, err := moduleDir(ctx, "github.com/cert-manager/cert-manager@"+CertManagerVersion)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "deploy", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("harness: no CRDs in %s/deploy/crds (%v)", dir, err)
	}
	c.logf("installing %d cert-manager %s CRDs", len(files), CertManagerVersion)
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("harness: %w", err)
		}
		objs, err := c.Apply(ctx, b)
		if err != nil {
			return fmt.Errorf("harness: cert-manager CRDs (%s): %w", filepath.Base(f), err)
		}
		for _, o := range objs {
			names = append(names, o.GetName())
		}
	}
	for _, name := range names {
		if err := c.waitFor(ctx, 60*time.Second, c.apiserver, "CRD "+name+" to be established", func(ctx context.Context) (bool, error) {
			crd, err := c.Dynamic.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, cond := range conds {
				m, _ := cond.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// moduleDir downloads (or finds in the module cache) a Go module and returns its folder.
func moduleDir(ctx context.Context, modAtVersion string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", modAtVersion)
	// Outside any module, so the e2e module's go.mod is neither read nor changed.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GO111MODULE=on")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("harness: go mod download %s: %w", modAtVersion, exitDetail(err))
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("harness: go mod download %s: %w", modAtVersion, err)
	}
	if info.Dir == "" {
		return "", fmt.Errorf("harness: go mod download %s: %s", modAtVersion, info.Error)
	}
	return info.Dir, nil
}

// OperatorUser is the KubeStash operator's username. The e2e tests make the operator's requests
// as it, and applyManifests names it the one allowed requester in the admission policy's
// parameters (the static manifests allow nobody), as an installation would.
const OperatorUser = "system:serviceaccount:kubestash:kubestash-kubestash-operator"

// AdmissionPolicyParams is the ConfigMap in WebhookNamespace, from manifests/, holding the
// ValidatingAdmissionPolicy's parameters (allowedRequesters, selfUsername).
const AdmissionPolicyParams = "credential-webhook-admission-policy"

var vapGVR = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"}

// applyManifests renders manifests/ and applies all of it, the MutatingWebhookConfiguration
// last and rewritten to point at the frontend with the dev CA, and the admission policy's
// parameters allowing OperatorUser. It returns once the apiserver has type-checked the
// ValidatingAdmissionPolicies without a warning and enforces the admission policy.
func (c *Cluster) applyManifests(ctx context.Context) error {
	objs, err := c.RenderManifests(ctx)
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(c.WebhookCertDir, "ca.crt"))
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	var first, middle, last []*unstructured.Unstructured
	var params, policies []string
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace":
			first = append(first, o)
		case "MutatingWebhookConfiguration":
			if err := PointWebhooksAt(o, c.WebhookURL, caPEM); err != nil {
				return fmt.Errorf("harness: %w", err)
			}
			last = append(last, o)
		default:
			if o.GetKind() == "ConfigMap" && o.GetNamespace() == WebhookNamespace && o.GetName() == AdmissionPolicyParams {
				if err := setPolicyParams(o); err != nil {
					return err
				}
				params = append(params, o.GetName())
			}
			if o.GetKind() == "ValidatingAdmissionPolicy" {
				policies = append(policies, o.GetName())
			}
			middle = append(middle, o)
		}
	}
	if len(last) != 1 {
		return fmt.Errorf("harness: manifests/ renders %d MutatingWebhookConfigurations, want 1", len(last))
	}
	// Two policies: the admission policy (who may set our annotations) and the self policy (what
	// the server's own identity may do), both enforced in every test.
	if len(params) != 1 || len(policies) != 2 {
		return fmt.Errorf("harness: manifests/ renders %d ConfigMaps %s/%s and %d ValidatingAdmissionPolicies, want 1 and 2",
			len(params), WebhookNamespace, AdmissionPolicyParams, len(policies))
	}
	c.logf("applying manifests/ (%d objects)", len(objs))
	all := append(append(first, middle...), last...)
	// A warning is a defect of the manifests too: a deprecated field, or a Deployment that
	// would violate its namespace's Pod Security level (reported as a warning, never refused).
	warnings := &Warnings{}
	cfg := rest.CopyConfig(c.Config)
	cfg.WarningHandlerWithContext = warnings
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	if _, err := c.applyWith(ctx, dyn, all); err != nil {
		return fmt.Errorf("harness: apply manifests/: %w", err)
	}
	if w := warnings.All(); len(w) > 0 {
		return fmt.Errorf("harness: the apiserver warned about manifests/: %s", strings.Join(w, "; "))
	}
	for _, p := range policies {
		if err := c.waitPolicyTypeChecked(ctx, p); err != nil {
			return err
		}
	}
	return c.waitPolicyEnforced(ctx)
}

// setPolicyParams makes OperatorUser the one allowed requester of the admission policy, and
// checks that the policy's self is the identity the harness runs the webhook replicas as.
func setPolicyParams(cm *unstructured.Unstructured) error {
	self := "system:serviceaccount:" + WebhookNamespace + ":" + WebhookServiceAccount
	if got, _, _ := unstructured.NestedString(cm.Object, "data", "selfUsername"); got != self {
		return fmt.Errorf("harness: %s/%s: selfUsername %q, but the harness runs the webhook as %s (WebhookNamespace, WebhookServiceAccount)",
			WebhookNamespace, AdmissionPolicyParams, got, self)
	}
	if err := unstructured.SetNestedField(cm.Object, "user:"+OperatorUser, "data", "allowedRequesters"); err != nil {
		return fmt.Errorf("harness: %s/%s: %w", WebhookNamespace, AdmissionPolicyParams, err)
	}
	return nil
}

// waitPolicyTypeChecked waits for the kube-controller-manager to type-check the policy's current
// generation against the real schemas, and fails when any expression drew a warning (an
// expression that does not type-check is an error at admission time, failing closed).
func (c *Cluster) waitPolicyTypeChecked(ctx context.Context, name string) error {
	var warnings []string
	if err := c.waitFor(ctx, 60*time.Second, c.kcm, "ValidatingAdmissionPolicy "+name+" to be type-checked (status.typeChecking)", func(ctx context.Context) (bool, error) {
		vap, err := c.Dynamic.Resource(vapGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		observed, _, _ := unstructured.NestedInt64(vap.Object, "status", "observedGeneration")
		tc, found, _ := unstructured.NestedMap(vap.Object, "status", "typeChecking")
		if !found || observed < vap.GetGeneration() {
			return false, nil
		}
		ws, _, _ := unstructured.NestedSlice(tc, "expressionWarnings")
		warnings = warnings[:0]
		for _, w := range ws {
			m, _ := w.(map[string]any)
			warnings = append(warnings, fmt.Sprintf("%v: %v", m["fieldRef"], strings.TrimSpace(fmt.Sprint(m["warning"]))))
		}
		return true, nil
	}); err != nil {
		return err
	}
	if len(warnings) > 0 {
		return fmt.Errorf("harness: ValidatingAdmissionPolicy %s does not type-check (status.typeChecking.expressionWarnings): %s", name, strings.Join(warnings, "; "))
	}
	return nil
}

// waitPolicyEnforced waits until the apiserver enforces the admission policy (its informers have
// the policy, the binding and the parameters): a dry-run ServiceAccount carrying one of our
// annotations, created as cluster admin (neither the webhook nor an allowed requester), is
// refused. It is created in WebhookNamespace, which the mutating webhooks never see.
func (c *Cluster) waitPolicyEnforced(ctx context.Context) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "harness-policy-probe-",
		Annotations:  map[string]string{"credential-webhook.klusters.dev/pending": "probe"},
	}}
	var last error
	err := c.waitFor(ctx, 30*time.Second, c.apiserver, "the admission policy to be enforced", func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(WebhookNamespace).Create(ctx, sa, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		last = err
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			return strings.Contains(err.Error(), "credential-webhook.klusters.dev/"), nil
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last dry run: %v)", err, last)
	}
	return nil
}

// PointWebhooksAt rewrites every webhooks[].clientConfig of a MutatingWebhookConfiguration from
// service to url (base + the service path), with caBundle. Everything else stays as rendered.
func PointWebhooksAt(mwc *unstructured.Unstructured, base string, caPEM []byte) error {
	hooks, _, err := unstructured.NestedSlice(mwc.Object, "webhooks")
	if err != nil {
		return fmt.Errorf("webhooks of %s: %w", mwc.GetName(), err)
	}
	for i, h := range hooks {
		m, ok := h.(map[string]any)
		if !ok {
			return fmt.Errorf("webhooks[%d] of %s is not an object", i, mwc.GetName())
		}
		path, _, _ := unstructured.NestedString(m, "clientConfig", "service", "path")
		if path == "" {
			return fmt.Errorf("webhooks[%d] (%v) has no clientConfig.service.path", i, m["name"])
		}
		m["clientConfig"] = map[string]any{"url": base + path, "caBundle": base64.StdEncoding.EncodeToString(caPEM)}
		hooks[i] = m
	}
	return unstructured.SetNestedSlice(mwc.Object, hooks, "webhooks")
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
