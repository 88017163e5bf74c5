package pods

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"syscall"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/patches"
)

// benchFixture is the realistic 4 KB KubeStash backup Pod (testdata/kubestash-backup).
func benchFixture(b *testing.B) fixture {
	f := loadFixture(b, filepath.Join("testdata", "kubestash-backup"))
	if n := len(f.rawPod); n < 3500 || n > 5000 {
		b.Fatalf("benchmark Pod is %d bytes, want about 4 KB", n)
	}
	return f
}

// BenchmarkInject measures the decisions and patch building alone, on a decoded Pod.
func BenchmarkInject(b *testing.B) {
	f := benchFixture(b)
	var pod corev1.Pod
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(f.rawPod, &pod); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(f.rawPod)))
	defer reportCPU(b)()
	for b.Loop() {
		pb := patches.NewBuilder()
		Inject(&pod, f.sa, f.cfg, pb)
		if pb.Len() != 6 {
			b.Fatalf("got %d ops", pb.Len())
		}
	}
}

// BenchmarkAdmit is the plugin's whole share of a Pod review: decode the raw Pod, look up the
// ServiceAccount (in memory, as from an informer), build the patch and serialise it.
func BenchmarkAdmit(b *testing.B) {
	f := benchFixture(b)
	p := NewPlugin(saMap{f.sa.Namespace + "/" + f.sa.Name: f.sa}, f.cfg)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(f.rawPod)))
	defer reportCPU(b)()
	for b.Loop() {
		resp := &admission.Response{Patch: patches.NewBuilder()}
		req := &admission.Request{Operation: admissionv1.Create, Namespace: "demo", Object: f.rawPod}
		if err := p.Admit(ctx, req, resp); err != nil {
			b.Fatal(err)
		}
		if _, err := json.Marshal(resp.Patch.Ops()); err != nil {
			b.Fatal(err)
		}
	}
}

// reportCPU adds cpu-ns/op: the process's user+system CPU time per operation (GC included). On a
// shared machine it is steadier than ns/op, and it is the unit of the design's target (CPU per
// review).
func reportCPU(b *testing.B) func() {
	var r0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	return func() {
		var r1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		ns := r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano()
		b.ReportMetric(float64(ns)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkDecode compares decodePod with decoding the whole corev1.Pod (what decodePod replaced).
func BenchmarkDecode(b *testing.B) {
	f := benchFixture(b)
	b.Run("decodePod", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, err := decodePod(f.rawPod); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decodePodFrom", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		// A *bytes.Buffer is read in place, as json.Unmarshal reads a []byte.
		var dec jsontext.Decoder
		for b.Loop() {
			dec.Reset(bytes.NewBuffer(f.rawPod))
			if _, err := decodePodFrom(&dec); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("corev1.Pod", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			var pod corev1.Pod
			if err := sigsjson.UnmarshalCaseSensitivePreserveInts(f.rawPod, &pod); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDecodeFullJSONv2 decodes the whole corev1.Pod with JSON v2: what decodePod would
// cost without its reduced view.
func BenchmarkDecodeFullJSONv2(b *testing.B) {
	f := benchFixture(b)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		var pod corev1.Pod
		if err := jsonv2.Unmarshal(f.rawPod, &pod); err != nil {
			b.Fatal(err)
		}
	}
}
