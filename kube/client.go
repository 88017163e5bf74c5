package kube

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// The Kubernetes API this server calls, and nothing more (issue 18). client-go's
// kubernetes.Interface, its typed clients, informer factory and leader election all import
// client-go's scheme, which registers every type of every API group, and the interface's method
// set reaches all of them too: the linker then keeps their codecs, about a quarter of the
// binary, and a binary's pages are resident memory. Client has the shape of kubernetes.Interface
// for the groups we use, so code reads the same (cs.CoreV1().ServiceAccounts(ns).Get(...)) and
// client-go's clientsets satisfy it through package kube/kubeadapter (tests, tools).
//
// Do not import k8s.io/client-go/kubernetes (or its typed, fake or scheme packages),
// k8s.io/client-go/informers or k8s.io/client-go/tools/leaderelection outside tests:
// TestServerBinaryLinksNoClientset (package main) fails when the server links one.

// Client is the part of the Kubernetes API this server calls.
type Client interface {
	CoreV1() CoreV1Client
	BatchV1() BatchV1Client
	CoordinationV1() CoordinationV1Client
	RbacV1() RbacV1Client
}

// Resource is the methods of a client-go typed client for objects T listed as L.
type Resource[T, L runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

// CoreV1Client is the core/v1 group.
type CoreV1Client interface {
	ServiceAccounts(namespace string) ServiceAccountClient
	Events(namespace string) Resource[*corev1.Event, *corev1.EventList]
}

// ServiceAccountClient is the ServiceAccounts of a namespace, with their token subresource.
type ServiceAccountClient interface {
	Resource[*corev1.ServiceAccount, *corev1.ServiceAccountList]
	CreateToken(ctx context.Context, serviceAccountName string, tokenRequest *authenticationv1.TokenRequest, opts metav1.CreateOptions) (*authenticationv1.TokenRequest, error)
}

// BatchV1Client is the batch/v1 group.
type BatchV1Client interface {
	Jobs(namespace string) Resource[*batchv1.Job, *batchv1.JobList]
}

// CoordinationV1Client is the coordination.k8s.io/v1 group.
type CoordinationV1Client interface {
	Leases(namespace string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
}

// RbacV1Client is the rbac.authorization.k8s.io/v1 group.
type RbacV1Client interface {
	ClusterRoles() Resource[*rbacv1.ClusterRole, *rbacv1.ClusterRoleList]
	ClusterRoleBindings() Resource[*rbacv1.ClusterRoleBinding, *rbacv1.ClusterRoleBindingList]
}

// Scheme knows the types of the groups Client serves (and meta/v1's options), for the codecs and
// for event references. Not client-go's scheme.Scheme, for the reason above.
var Scheme = runtime.NewScheme()

var (
	codecs         = serializer.NewCodecFactory(Scheme)
	parameterCodec = runtime.NewParameterCodec(Scheme)
)

func init() {
	// As client-go's kubernetes/scheme does, for these groups only.
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	groups := runtime.SchemeBuilder{corev1.AddToScheme, batchv1.AddToScheme, coordinationv1.AddToScheme, rbacv1.AddToScheme, authenticationv1.AddToScheme}
	utilruntime.Must(groups.AddToScheme(Scheme))
}

// NewClient returns a Client for cfg, made as kubernetes.NewForConfig makes a clientset: one HTTP
// client and one rate limiter (QPS, Burst) for every group, the generated clients' REST
// machinery (package gentype) and protobuf for the built-in types.
func NewClient(cfg *rest.Config) (Client, error) {
	c := *cfg
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	httpClient, err := rest.HTTPClientFor(&c)
	if err != nil {
		return nil, err
	}
	if c.RateLimiter == nil && c.QPS > 0 {
		if c.Burst <= 0 {
			return nil, fmt.Errorf("burst is required to be greater than 0 when RateLimiter is not set and QPS is set to greater than 0")
		}
		c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.QPS, c.Burst)
	}
	var out client
	for _, g := range []struct {
		rc      *rest.Interface
		gv      schema.GroupVersion
		apiPath string
	}{
		{&out.core, corev1.SchemeGroupVersion, "/api"},
		{&out.batch, batchv1.SchemeGroupVersion, "/apis"},
		{&out.coordination, coordinationv1.SchemeGroupVersion, "/apis"},
		{&out.rbac, rbacv1.SchemeGroupVersion, "/apis"},
	} {
		gc := c
		gc.GroupVersion = &g.gv
		gc.APIPath = g.apiPath
		gc.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(Scheme, codecs).WithoutConversion()
		rc, err := rest.RESTClientForConfigAndClient(&gc, httpClient)
		if err != nil {
			return nil, err
		}
		*g.rc = rc
	}
	return &out, nil
}

type client struct{ core, batch, coordination, rbac rest.Interface }

func (c *client) CoreV1() CoreV1Client                 { return coreV1{c.core} }
func (c *client) BatchV1() BatchV1Client               { return batchV1{c.batch} }
func (c *client) CoordinationV1() CoordinationV1Client { return coordinationV1{c.coordination} }
func (c *client) RbacV1() RbacV1Client                 { return rbacV1{c.rbac} }

type coreV1 struct{ rc rest.Interface }

func (g coreV1) ServiceAccounts(namespace string) ServiceAccountClient {
	return serviceAccounts{newResource(g.rc, "serviceaccounts", namespace, func() *corev1.ServiceAccount { return &corev1.ServiceAccount{} }, func() *corev1.ServiceAccountList { return &corev1.ServiceAccountList{} })}
}

func (g coreV1) Events(namespace string) Resource[*corev1.Event, *corev1.EventList] {
	return newResource(g.rc, "events", namespace, func() *corev1.Event { return &corev1.Event{} }, func() *corev1.EventList { return &corev1.EventList{} })
}

type serviceAccounts struct {
	*gentype.ClientWithList[*corev1.ServiceAccount, *corev1.ServiceAccountList]
}

// CreateToken asks for a token of the ServiceAccount (the token subresource).
func (c serviceAccounts) CreateToken(ctx context.Context, serviceAccountName string, tokenRequest *authenticationv1.TokenRequest, opts metav1.CreateOptions) (*authenticationv1.TokenRequest, error) {
	result := &authenticationv1.TokenRequest{}
	err := c.GetClient().Post().
		UseProtobufAsDefault().
		Namespace(c.GetNamespace()).
		Resource("serviceaccounts").
		Name(serviceAccountName).
		SubResource("token").
		VersionedParams(&opts, parameterCodec).
		Body(tokenRequest).
		Do(ctx).
		Into(result)
	return result, err
}

type batchV1 struct{ rc rest.Interface }

func (g batchV1) Jobs(namespace string) Resource[*batchv1.Job, *batchv1.JobList] {
	return newResource(g.rc, "jobs", namespace, func() *batchv1.Job { return &batchv1.Job{} }, func() *batchv1.JobList { return &batchv1.JobList{} })
}

type coordinationV1 struct{ rc rest.Interface }

func (g coordinationV1) Leases(namespace string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return newResource(g.rc, "leases", namespace, func() *coordinationv1.Lease { return &coordinationv1.Lease{} }, func() *coordinationv1.LeaseList { return &coordinationv1.LeaseList{} })
}

type rbacV1 struct{ rc rest.Interface }

func (g rbacV1) ClusterRoles() Resource[*rbacv1.ClusterRole, *rbacv1.ClusterRoleList] {
	return newResource(g.rc, "clusterroles", "", func() *rbacv1.ClusterRole { return &rbacv1.ClusterRole{} }, func() *rbacv1.ClusterRoleList { return &rbacv1.ClusterRoleList{} })
}

func (g rbacV1) ClusterRoleBindings() Resource[*rbacv1.ClusterRoleBinding, *rbacv1.ClusterRoleBindingList] {
	return newResource(g.rc, "clusterrolebindings", "", func() *rbacv1.ClusterRoleBinding { return &rbacv1.ClusterRoleBinding{} }, func() *rbacv1.ClusterRoleBindingList { return &rbacv1.ClusterRoleBindingList{} })
}

// newResource is what client-go's generated clients make for a resource (they prefer protobuf
// for every built-in type).
func newResource[T interface {
	runtime.Object
	metav1.Object
}, L runtime.Object](rc rest.Interface, resource, namespace string, newObject func() T, newList func() L) *gentype.ClientWithList[T, L] {
	return gentype.NewClientWithList[T, L](resource, rc, parameterCodec, namespace, newObject, newList, gentype.PrefersProtobuf[T]())
}

// EventSink writes the Events of a client-go record.EventBroadcaster, as client-go's
// EventSinkImpl does: in the namespace of each Event.
type EventSink struct{ Client Client }

// Create implements record.EventSink.
func (s EventSink) Create(e *corev1.Event) (*corev1.Event, error) {
	return s.Client.CoreV1().Events(e.Namespace).Create(context.Background(), e, metav1.CreateOptions{})
}

// Update implements record.EventSink.
func (s EventSink) Update(e *corev1.Event) (*corev1.Event, error) {
	return s.Client.CoreV1().Events(e.Namespace).Update(context.Background(), e, metav1.UpdateOptions{})
}

// Patch implements record.EventSink.
func (s EventSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	return s.Client.CoreV1().Events(e.Namespace).Patch(context.Background(), e.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
}
