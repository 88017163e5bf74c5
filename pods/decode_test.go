package pods

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	sigsjson "sigs.k8s.io/json"

	"go.klusters.dev/credential-webhook/annotations"
)

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
	// fromPod is what Inject reads of a decoded Pod: the view must hold the same, and a field
	// fromPod forgot to copy differs here for the inputs that set it.
	if want := fromPod(&full); !reflect.DeepEqual(got, want) {
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

// TestFromPodKeepsAbsentApart: fromPod keeps nil (absent) and empty (present) slices apart, as
// decodePod does, since the patches for the two differ; and picks the same map entries.
func TestFromPodKeepsAbsentApart(t *testing.T) {
	ann := map[string]string{"a": "1", annotations.AWSSkipContainers: "x"}
	tests := []struct {
		name string
		pod  corev1.Pod
		want string // decodePod's view of the same Pod, as JSON
	}{
		{"absent", corev1.Pod{}, `{}`},
		{"empty", corev1.Pod{Spec: corev1.PodSpec{Volumes: []corev1.Volume{}, InitContainers: []corev1.Container{}, Containers: []corev1.Container{}}},
			`{"spec":{"volumes":[],"initContainers":[],"containers":[]}}`},
		{"container lists", corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}, {Name: "b", Env: []corev1.EnvVar{}, VolumeMounts: []corev1.VolumeMount{}}}}},
			`{"spec":{"containers":[{"name":"a"},{"name":"b","env":[],"volumeMounts":[]}]}}`},
		{"everything inject reads", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Annotations: ann, Labels: map[string]string{}},
			Spec: corev1.PodSpec{ServiceAccountName: "sa", NodeSelector: map[string]string{"k": "v", corev1.LabelOSStable: "linux"}, OS: &corev1.PodOS{Name: corev1.Windows},
				SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](7)}, Volumes: []corev1.Volume{{Name: "v"}},
				InitContainers: []corev1.Container{{Name: "i", Env: []corev1.EnvVar{{Name: "E", Value: "x"}},
					VolumeMounts: []corev1.VolumeMount{{Name: "v", MountPath: "/m", ReadOnly: true}}, SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](0)}}}}},
			`{"metadata":{"namespace":"ns","annotations":{"a":"1","eks.amazonaws.com/skip-containers":"x"},"labels":{}},"spec":{"serviceAccountName":"sa","nodeSelector":{"k":"v","kubernetes.io/os":"linux"},"os":{"name":"windows"},` +
				`"securityContext":{"runAsUser":7},"volumes":[{"name":"v"}],"initContainers":[{"name":"i","env":[{"name":"E","value":"x"}],` +
				`"volumeMounts":[{"name":"v","mountPath":"/m","readOnly":true}],"securityContext":{"runAsUser":0}}]}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := fromPod(&tc.pod)
			want, err := decodePod([]byte(tc.want))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("fromPod = %+v\ndecodePod = %+v", got, want)
			}
		})
	}
	v := fromPod(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: ann}})
	if want := (podStrings{annotations.AWSSkipContainers: "x"}); !reflect.DeepEqual(v.Metadata.Annotations, want) {
		t.Errorf("fromPod annotations = %v, want %v", v.Metadata.Annotations, want)
	}
}

// podStrings keeps the keys inject reads, however the JSON spells them, and checks the rest
// as the map decoder would: every value a string or null, no duplicate key.
func TestPodStrings(t *testing.T) {
	long := strings.Repeat(`\u0061`, 80) // 480 bytes spelling 80 "a"s: read, then dropped
	escaped := ""
	for _, r := range annotations.AWSSkipPodIdentityLabel {
		escaped += fmt.Sprintf(`\u%04x`, r) // 258 bytes spelling the opt-out label
	}
	for _, tc := range []struct {
		in      string
		want    podStrings
		wantErr bool
	}{
		{in: `null`},
		{in: `{}`},
		{in: `{"app":"x","team":"y"}`},
		{in: `{"app":"x","eks.amazonaws.com/skip-pod-identity-webhook":""}`, want: podStrings{annotations.AWSSkipPodIdentityLabel: ""}},
		{in: `{"eks.amazonaws.com\/skip-pod-identity-webhook":"t\u0072ue"}`, want: podStrings{annotations.AWSSkipPodIdentityLabel: "true"}},
		{in: `{"` + escaped + `":"1"}`, want: podStrings{annotations.AWSSkipPodIdentityLabel: "1"}},
		{in: `{"` + long + `":"1","go.klusters.dev/restic-credentials":null}`, want: podStrings{annotations.ResticCredentials: ""}},
		{in: `{"kubernetes.io/os":"windows","eks.amazonaws.com/token-expiration":"3600","eks.amazonaws.com/skip-containers":"a,b"}`,
			want: podStrings{corev1.LabelOSStable: "windows", annotations.AWSTokenExpiration: "3600", annotations.AWSSkipContainers: "a,b"}},
		{in: `{"a":1}`, wantErr: true},
		{in: `{"a":{}}`, wantErr: true},
		{in: `{"kubernetes.io/os":true}`, wantErr: true},
		{in: `{"a":"1","a":"2"}`, wantErr: true},
		{in: `{"kubernetes.io/os":"a","kubernetes.io\/os":"b"}`, wantErr: true},
		{in: `["a"]`, wantErr: true},
		{in: `"a"`, wantErr: true},
		{in: `{"a":"1"`, wantErr: true},
	} {
		got, err := decodePod([]byte(`{"metadata":{"labels":` + tc.in + `}}`))
		if tc.wantErr {
			if err == nil {
				t.Errorf("%s: decoded to %v, want an error", tc.in, got.Metadata.Labels)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got.Metadata.Labels, tc.want) {
			t.Errorf("%s: %#v, want %#v", tc.in, got.Metadata.Labels, tc.want)
		}
	}
}
