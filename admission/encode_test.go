package admission

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// hostileStrings are strings whose JSON form differs from their bytes: quotes and backslashes,
// every kind of control character, the HTML characters encoding/json escapes, the JavaScript
// line terminators, invalid and truncated UTF-8, and plain multi-byte text.
var hostileStrings = []string{
	"", "plain", `a"b`, `a\b`, `\"`, "tab\there", "nl\n", "cr\r", "\b\f", "bell\x07", "nul\x00", "\x1f", "\x7f",
	"<script>&amp;</script>", "é-ü", "emoji😀", "ls\u2028ps\u2029", "\u2027\u202a", "bad\xffutf8", "\xc3", "\xe2\x80",
	"\xed\xa0\x80", "\xf4\x90\x80\x80", "\ufffd", "\u00a0", "a/b~c", strings.Repeat(`"<\`, 50),
}

// allBytes is a string holding every byte value once, then every byte after a multi-byte lead.
func allBytes() string {
	var b []byte
	for c := 0; c < 256; c++ {
		b = append(b, byte(c))
	}
	for c := 0; c < 256; c++ {
		b = append(b, 0xe2, 0x80, byte(c))
	}
	return string(b)
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range append(hostileStrings, allBytes()) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Errorf("appendString(%q)\n got  %s\n want %s", s, got, want)
		}
	}
	// It appends: what is already in dst stays.
	if got := appendString([]byte("x:"), "y"); string(got) != `x:"y"` {
		t.Errorf("appendString does not append: %s", got)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range hostileStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q)\n got  %s\n want %s", s, got, want)
		}
	})
}

// refPatchOp and refMarshalOps are the encoder appendPatch replaced: the reference its output
// must equal.
type refPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

func refMarshalOps(ops []jsonpatch.Operation) ([]byte, error) {
	out := make([]refPatchOp, len(ops))
	for i, o := range ops {
		out[i] = refPatchOp{Op: o.Operation, Path: o.Path, Value: o.Value}
	}
	return json.Marshal(out)
}

// patchValues are values patches carry: every fast path, each with what sends it to the slow
// one, and values only encoding/json handles.
func patchValues(s string) []any {
	mode := corev1.MountPropagationHostToContainer
	rro := corev1.RecursiveReadOnlyEnabled
	exp, neg := int64(86400), int64(-1)
	mode32 := int32(0o440)
	return []any{
		s, true, false, nil, (*string)(nil), 42, int64(-7), 1.5,
		map[string]any{s: s, "b": "2", "a": true, "": "empty", "z" + s: map[string]any{"x": s}},
		map[string]any{}, map[string]any(nil), map[string]string{s: s, "k": "v"}, map[string]string(nil),
		[]any{s}, []any{}, []any(nil), []any{corev1.EnvVar{Name: s}, map[string]any{"a": s}},
		[]string{s}, map[string]int{s: 1},
		corev1.EnvVar{Name: s, Value: s}, corev1.EnvVar{Name: s}, corev1.EnvVar{},
		corev1.EnvVar{Name: s, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: s}}},
		corev1.VolumeMount{Name: s, MountPath: s}, corev1.VolumeMount{Name: s, ReadOnly: true, MountPath: s, SubPath: s, SubPathExpr: s},
		corev1.VolumeMount{Name: s, MountPath: s, MountPropagation: &mode},
		corev1.VolumeMount{Name: s, MountPath: s, RecursiveReadOnly: &rro},
		corev1.VolumeMount{Name: s, MountPath: s, BindMountOptions: []string{s}},
		corev1.VolumeMount{Name: s, MountPath: s, BindMountOptions: []string{}},
		&corev1.EnvVar{Name: s}, &corev1.EnvVar{Name: s, Value: s}, (*corev1.EnvVar)(nil),
		&corev1.EnvVar{Name: s, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: s}}},
		corev1.Volume{Name: s, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: s, ExpirationSeconds: &exp, Path: s}}}}}},
		corev1.Container{Name: s, Image: s, Env: []corev1.EnvVar{{Name: s, Value: s}}},
		tokenVolume(s, nil, nil), tokenVolume("", &exp, nil), tokenVolume(s, &exp, &mode32), tokenVolume(s, &neg, &mode32),
		withUser(tokenVolume(s, &exp, nil)), twoTokens(tokenVolume(s, &exp, nil)),
		corev1.Volume{Name: s, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}},
		corev1.Volume{Name: s, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{}}}},
		corev1.Volume{Name: s, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{}}}}},
		corev1.Volume{Name: s, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: s}, ConfigMap: &corev1.ConfigMapProjection{}}}}}},
		withSecret(tokenVolume(s, &exp, nil)),
		corev1.Volume{Name: s, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
		corev1.Volume{Name: s},
		json.RawMessage(`{"raw" : [1, 2]}`),
	}
}

func tokenVolume(audience string, exp *int64, mode *int32) corev1.Volume {
	return corev1.Volume{Name: "aws-iam-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: mode,
		Sources:     []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: audience, ExpirationSeconds: exp, Path: "to\"ken"}}},
	}}}
}

func withUser(v corev1.Volume) corev1.Volume {
	u := int64(1000)
	v.Projected.DefaultUser, v.Projected.Sources[0].ServiceAccountToken.User = &u, &u
	return v
}

func twoTokens(v corev1.Volume) corev1.Volume {
	v.Projected.Sources = append(v.Projected.Sources, corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "second"}})
	return v
}

func withSecret(v corev1.Volume) corev1.Volume {
	v.Secret = &corev1.SecretVolumeSource{SecretName: "s"}
	return v
}

func TestAppendPatchMatchesEncodingJSON(t *testing.T) {
	for _, s := range hostileStrings {
		var ops []jsonpatch.Operation
		for _, v := range patchValues(s) {
			ops = append(ops, jsonpatch.Operation{Operation: "add", Path: "/metadata/annotations/" + s, Value: v})
		}
		ops = append(ops, jsonpatch.Operation{Operation: "remove", Path: s})
		for i := 0; i <= len(ops); i++ {
			// Each value alone, then all of them in one patch.
			in := ops
			if i < len(ops) {
				in = ops[i : i+1]
			}
			want, err := refMarshalOps(in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := appendPatch(nil, in)
			if err != nil {
				t.Fatalf("appendPatch: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("appendPatch(%#v)\n got  %s\n want %s", in, got, want)
			}
		}
	}
	if got, err := appendPatch(nil, nil); err != nil || string(got) != "[]" {
		t.Errorf("empty patch: %s, %v", got, err)
	}
	// A value encoding/json refuses is an error, not a broken patch.
	if _, err := appendPatch(nil, []jsonpatch.Operation{{Operation: "add", Path: "/x", Value: make(chan int)}}); err == nil {
		t.Error("appendPatch accepted a channel")
	}
}

func FuzzAppendPatch(f *testing.F) {
	for _, s := range hostileStrings {
		f.Add(s, s, s)
	}
	f.Fuzz(func(t *testing.T, op, path, s string) {
		var ops []jsonpatch.Operation
		for _, v := range patchValues(s) {
			ops = append(ops, jsonpatch.Operation{Operation: op, Path: path, Value: v})
		}
		want, err := refMarshalOps(ops)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendPatch(nil, ops)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("appendPatch: %v\n got  %s\n want %s", err, got, want)
		}
	})
}

func TestAppendReviewMatchesEncodingJSON(t *testing.T) {
	pt := jsonPatchType
	for _, s := range append(hostileStrings, allBytes()) {
		for _, r := range []responseOut{
			{UID: "u", Allowed: true},
			{UID: "", Allowed: false},
			{UID: types.UID("u" + s), Allowed: true, Patch: []byte(`[{"op":"add","path":"/a","value":"` + s + `"}]`), PatchType: &pt, Warnings: []string{s, "second"}},
			{UID: types.UID(s), Allowed: false, Status: &statusOut{Code: 403, Message: s}, Warnings: []string{s}},
			{UID: "u", Allowed: false, Status: &statusOut{Code: -1}},
			{UID: "u", Allowed: true, Patch: []byte{}, PatchType: ptr.To(s), Warnings: []string{}},
			{UID: "u", Allowed: true, Patch: []byte{0, 1, 2, 0xfb, 0xff}},
		} {
			out := reviewOut{APIVersion: reviewAPIVersion, Kind: s, Response: r}
			want, err := json.Marshal(&out)
			if err != nil {
				t.Fatal(err)
			}
			if got := appendReview(nil, &out); !bytes.Equal(got, want) {
				t.Errorf("appendReview(%+v)\n got  %s\n want %s", r, got, want)
			}
		}
	}
}

// TestFastPathStructsUnchanged fails when k8s.io/api adds a field to a struct appendValue writes
// by hand: the fast path would silently drop it. Teach appendValue the field (or its fallback
// condition), then update the list here.
func TestFastPathStructsUnchanged(t *testing.T) {
	for _, c := range []struct {
		v    any
		tags []string
	}{
		{corev1.EnvVar{}, []string{"name", "value,omitempty", "valueFrom,omitempty"}},
		{corev1.VolumeMount{}, []string{"name", "readOnly,omitempty", "recursiveReadOnly,omitempty", "mountPath",
			"subPath,omitempty", "mountPropagation,omitempty", "subPathExpr,omitempty", "bindMountOptions,omitempty"}},
		{corev1.Volume{}, []string{"name", ""}},
		{corev1.ProjectedVolumeSource{}, []string{"sources", "defaultMode,omitempty", "defaultUser,omitempty"}},
		{corev1.ServiceAccountTokenProjection{}, []string{"audience,omitempty", "expirationSeconds,omitempty", "path", "user,omitempty"}},
	} {
		typ := reflect.TypeOf(c.v)
		var tags []string
		for i := range typ.NumField() {
			tags = append(tags, typ.Field(i).Tag.Get("json"))
		}
		if !reflect.DeepEqual(tags, c.tags) {
			t.Errorf("%s has JSON fields %q; appendValue knows %q", typ, tags, c.tags)
		}
	}
}

// The hostile strings are valid test input only if some are invalid UTF-8.
func TestHostileStringsHaveInvalidUTF8(t *testing.T) {
	for _, s := range hostileStrings {
		if !utf8.ValidString(s) {
			return
		}
	}
	t.Fatal("no invalid UTF-8 among hostileStrings")
}
