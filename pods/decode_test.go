package pods

import (
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"
)

// skeleton copies from a fully decoded Pod exactly the fields decodePod fills.
func skeleton(full *corev1.Pod) *corev1.Pod {
	p := &corev1.Pod{}
	p.Namespace, p.Annotations, p.Labels = full.Namespace, full.Annotations, full.Labels
	s, f := &p.Spec, &full.Spec
	s.ServiceAccountName, s.NodeSelector = f.ServiceAccountName, f.NodeSelector
	if f.OS != nil {
		s.OS = &corev1.PodOS{Name: f.OS.Name}
	}
	if f.SecurityContext != nil {
		s.SecurityContext = &corev1.PodSecurityContext{RunAsUser: f.SecurityContext.RunAsUser}
	}
	if f.Volumes != nil {
		s.Volumes = make([]corev1.Volume, len(f.Volumes))
		for i := range f.Volumes {
			s.Volumes[i].Name = f.Volumes[i].Name
		}
	}
	s.InitContainers, s.Containers = skeletonContainers(f.InitContainers), skeletonContainers(f.Containers)
	return p
}

func skeletonContainers(fs []corev1.Container) []corev1.Container {
	if fs == nil {
		return nil
	}
	cs := make([]corev1.Container, len(fs))
	for i, f := range fs {
		c := &cs[i]
		c.Name = f.Name
		if f.Env != nil {
			c.Env = make([]corev1.EnvVar, len(f.Env))
			for j := range f.Env {
				c.Env[j].Name = f.Env[j].Name
			}
		}
		if f.VolumeMounts != nil {
			c.VolumeMounts = make([]corev1.VolumeMount, len(f.VolumeMounts))
			for j, m := range f.VolumeMounts {
				c.VolumeMounts[j] = corev1.VolumeMount{Name: m.Name, MountPath: m.MountPath}
			}
		}
		if f.SecurityContext != nil {
			c.SecurityContext = &corev1.SecurityContext{RunAsUser: f.SecurityContext.RunAsUser}
		}
	}
	return cs
}

// checkDecodeMatches fails when raw decodes fully but decodePod disagrees or fails.
func checkDecodeMatches(t *testing.T, raw []byte) {
	t.Helper()
	var full corev1.Pod
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &full); err != nil {
		return // not a Pod the apiserver could send; decodePod may do anything but panic
	}
	got, err := decodePod(raw)
	if err != nil {
		t.Fatalf("decodePod failed where json.Unmarshal succeeded: %v\n%s", err, raw)
	}
	if want := skeleton(&full); !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("decodePod differs from json.Unmarshal:\ngot  %s\nwant %s\ninput %s", g, w, raw)
	}
}

var decodeCases = []string{
	`{}`,
	`null`,
	`{"metadata":{"namespace":"a\\"},"spec":{"serviceAccountName":"b\\\"c\\\\","x":"\\\\\""}}`,
	` {"metadata":null,"spec":null} `,
	`{"spec":{"containers":[]}}`,
	`{"spec":{"containers":null,"initContainers":[null,{}]}}`,
	`{"spec":{"containers":[{"name":"a","env":[],"volumeMounts":null}]}}`,
	`{"spec":{"containers":[{"name":"a","env":[{"name":"X","value":"}]\"{["},{"valueFrom":{"fieldRef":{"fieldPath":"a"}}}]}]}}`,
	`{"metadata":{"annotations":{"a\u002fb":"\u00e9t\u00e9","k":"v\"q"},"namespace":"d\u0065mo"}}`,
	`{"metadata":{"annotations":{}}, "spec" : { "nodeSelector" : { "kubernetes.io/os" : "windows" } , "os" : {"name":"windows"}}}`,
	`{"spec":{"securityContext":{"runAsUser":1000,"fsGroup":2},"containers":[{"securityContext":{"runAsUser":null}},{"securityContext":{"runAsUser":-0}}]}}`,
	`{"spec":{"volumes":[{"name":"v","projected":{"sources":[{"serviceAccountToken":{"path":"t"}}]}},{"emptyDir":{}}]}}`,
	`{"spec":{"serviceAccountName":"sa","unknown":{"deep":[[[{"x":"]"}]]],"n":-1.5e3,"t":true,"f":false,"z":null}}}`,
	"{\"spec\":{\"containers\":[{\"name\":\"caf\u00e9\",\"Env\":[{\"name\":\"ignored: keys are case-sensitive\"}]}]}}",
	"{\n\t\"spec\": {\r\n\"containers\": [ { \"name\" : \"ws\" } ]\n}\n}",
}

func TestDecodePodMatchesFullDecode(t *testing.T) {
	for _, c := range decodeCases {
		checkDecodeMatches(t, []byte(c))
	}
	for _, dir := range fixtureDirs(t) {
		checkDecodeMatches(t, loadFixture(t, dir).rawPod)
	}
}

func TestDecodePodRejectsMalformed(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `"x"`, `{"spec":`, `{"spec":{"containers":[{"name":"a"}`, `{"spec":{"containers":"x"}}`,
		`{"spec":{"containers":[{"name":5}]}}`, `{"spec":{"securityContext":{"runAsUser":"1"}}}`,
		`{"spec":{"securityContext":{"runAsUser":1.5}}}`, `{"metadata":{"annotations":{"a":1}}}`,
		`{"a" 1}`, `{"a":1 "b":2}`, `{"a":"unterminated}`, `{,}`, `{"spec":{"volumes":[1,]}}`,
		// Never written by an apiserver; refused rather than read one of two ways.
		`{"spec":{"serviceAccountName":"a","serviceAccountName":"b"}}`, "{\"metadata\":{\"namespace\":\"\xff\"}}",
	} {
		if _, err := decodePod([]byte(in)); err == nil {
			t.Errorf("decodePod(%q) succeeded", in)
		}
	}
}

// FuzzDecodePod: decodePod never panics, and agrees with the apiserver's decoder on every Pod the
// latter accepts, except inputs with duplicate keys or invalid UTF-8, which decodePod refuses and
// no apiserver output exhibits. Seeds: the fixtures and decodeCases. Run longer with
// go test -fuzz FuzzDecodePod ./pods/
func FuzzDecodePod(f *testing.F) {
	for _, c := range decodeCases {
		f.Add([]byte(c))
	}
	for _, dir := range fixtureDirs(f) {
		f.Add(loadFixture(f, dir).rawPod)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, _ = decodePod(raw)
		if json.Valid(raw) && utf8.Valid(raw) && !hasDuplicateKeys(raw) {
			checkDecodeMatches(t, raw)
		}
	})
}

func hasDuplicateKeys(raw []byte) bool {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	type frame struct {
		keys     map[string]bool
		isObject bool
		wantKey  bool
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) || err != nil {
			return false
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				if n := len(stack); n > 0 && stack[n-1].isObject {
					stack[n-1].wantKey = true
				}
				stack = append(stack, frame{keys: map[string]bool{}, isObject: true, wantKey: true})
			case '[':
				if n := len(stack); n > 0 && stack[n-1].isObject {
					stack[n-1].wantKey = true
				}
				stack = append(stack, frame{})
			default:
				stack = stack[:len(stack)-1]
			}
			continue
		}
		n := len(stack)
		if n == 0 || !stack[n-1].isObject {
			continue
		}
		if stack[n-1].wantKey {
			k := tok.(string)
			if stack[n-1].keys[k] {
				return true
			}
			stack[n-1].keys[k] = true
			stack[n-1].wantKey = false
		} else {
			stack[n-1].wantKey = true
		}
	}
}
