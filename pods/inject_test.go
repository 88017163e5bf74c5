package pods

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

func TestSkipSet(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]bool
	}{
		{"", nil},
		{"istio-proxy", map[string]bool{"istio-proxy": true}},
		{" istio-proxy , metrics,,", map[string]bool{"istio-proxy": true, "metrics": true}},
		{",", map[string]bool{}},
	}
	for _, tt := range tests {
		if got := skipSet(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("skipSet(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestIsWindows(t *testing.T) {
	tests := []struct {
		name string
		spec corev1.PodSpec
		want bool
	}{
		{"nothing", corev1.PodSpec{}, false},
		{"nodeSelector windows", corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/os": "windows"}}, true},
		{"nodeSelector linux", corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/os": "linux"}}, false},
		{"beta label is not the EKS key", corev1.PodSpec{NodeSelector: map[string]string{"beta.kubernetes.io/os": "windows"}}, false},
		{"spec.os windows", corev1.PodSpec{OS: &corev1.PodOS{Name: corev1.Windows}}, true},
		{"spec.os linux", corev1.PodSpec{OS: &corev1.PodOS{Name: corev1.Linux}}, false},
	}
	for _, tt := range tests {
		if got := isWindows(&fromPod(&corev1.Pod{Spec: tt.spec}).Spec); got != tt.want {
			t.Errorf("%s: isWindows = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestJoinPath(t *testing.T) {
	tests := []struct {
		dir     string
		windows bool
		want    string
	}{
		{TokenMountPath, false, "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"},
		{"/custom/", false, "/custom/token"},
		{WindowsTokenMountPath, true, `C:\var\run\secrets\eks.amazonaws.com\serviceaccount\token`},
		{`C:\custom\`, true, `C:\custom\token`},
	}
	for _, tt := range tests {
		if got := joinPath(tt.dir, TokenFileName, tt.windows); got != tt.want {
			t.Errorf("joinPath(%q, %v) = %q, want %q", tt.dir, tt.windows, got, tt.want)
		}
	}
}

func TestServiceAccountAudience(t *testing.T) {
	tests := []struct {
		ann  map[string]string
		def  string
		want string
	}{
		{nil, "sts.amazonaws.com", "sts.amazonaws.com"},
		{map[string]string{annotations.AWSAudience: ""}, "sts.amazonaws.com", "sts.amazonaws.com"},
		{map[string]string{annotations.AWSAudience: " sts.amazonaws.com.cn "}, "sts.amazonaws.com", "sts.amazonaws.com.cn"},
		{nil, "minio", "minio"},
		{map[string]string{annotations.AWSAudience: "sts.amazonaws.com"}, "minio", "sts.amazonaws.com"},
	}
	for _, tt := range tests {
		if got := serviceAccountAudience(tt.ann, tt.def); got != tt.want {
			t.Errorf("audience(%v, %q) = %q, want %q", tt.ann, tt.def, got, tt.want)
		}
	}
}

func TestConfigTokenDefaults(t *testing.T) {
	tests := []struct {
		cfg                      Config
		audience, linux, windows string
	}{
		{Config{}, "sts.amazonaws.com", TokenMountPath, WindowsTokenMountPath},
		{Config{Audience: " minio "}, "minio", TokenMountPath, WindowsTokenMountPath},
		// The default spelled out gives the same Windows path as the EKS webhook's.
		{Config{MountPath: TokenMountPath}, "sts.amazonaws.com", TokenMountPath, WindowsTokenMountPath},
		{Config{MountPath: "/var/run/secrets/irsa"}, "sts.amazonaws.com", "/var/run/secrets/irsa", `C:\var\run\secrets\irsa`},
	}
	for _, tt := range tests {
		if a, l, w := tt.cfg.audience(), tt.cfg.mountPath(), tt.cfg.windowsMountPath(); a != tt.audience || l != tt.linux || w != tt.windows {
			t.Errorf("%+v: audience %q, mount paths %q and %q; want %q, %q, %q", tt.cfg, a, l, w, tt.audience, tt.linux, tt.windows)
		}
	}
}

func TestParseFlags(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"", "", false},
		{TokenMountPath, TokenMountPath, false},
		{"/irsa", "/irsa", false},
		{"relative/path", "", true},
		{"/", "", true},
		{"/a/../b", "", true},
		{"/a/", "", true},
		{`C:\irsa`, "", true},
	} {
		got, err := ParseMountPath(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseMountPath(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	for _, tt := range []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"sts.amazonaws.com", "sts.amazonaws.com", false},
		{" minio ", "minio", false},
		{"", "", false},
		{"a,b", "", true},
		{"a b", "", true},
	} {
		got, err := ParseAudience(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseAudience(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	for _, tt := range []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{"0", 0, false},
		{"0.1", 0.1, false},
		{"0.5", 0.5, false},
		{"0.6", 0, true},
		{"-0.1", 0, true},
		{"NaN", 0, true},
		{"10%", 0, true},
	} {
		got, err := ParseJitter(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseJitter(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestJitterExpiration(t *testing.T) {
	fixed := func(v int64) func(int64) int64 { return func(n int64) int64 { return min(v, n-1) } }
	tests := []struct {
		name string
		exp  int64
		frac float64
		rand func(int64) int64
		want int64
	}{
		{"off", 86400, 0, fixed(1000), 86400},
		{"lowest draw keeps the lifetime", 86400, 0.1, fixed(0), 86400},
		{"a draw takes it off", 86400, 0.1, fixed(1000), 85400},
		{"the highest draw is the whole span", 86400, 0.1, fixed(1 << 40), 86400 - 8640},
		{"never under the minimum", 700, 0.5, fixed(1 << 40), 600},
		{"the minimum stays", 600, 0.5, fixed(1 << 40), 600},
		{"a span under a second is none", 600, 0.001, fixed(1 << 40), 600},
	}
	for _, tt := range tests {
		if got := jitterExpiration(tt.exp, tt.frac, tt.rand); got != tt.want {
			t.Errorf("%s: jitterExpiration(%d, %g) = %d, want %d", tt.name, tt.exp, tt.frac, got, tt.want)
		}
	}
	// The real source stays within the span.
	cfg := Config{ExpirationJitter: 0.1}
	for range 1000 {
		if got := jitterExpiration(86400, cfg.jitter(), cfg.randN); got < 86400-8640 || got > 86400 {
			t.Fatalf("jittered lifetime %d outside [77760, 86400]", got)
		}
	}
}

// tokenExpirationOf finds the token volume among the operations (one volume, or the whole array
// when the Pod had none) and returns its expirationSeconds.
func tokenExpirationOf(t *testing.T, b *patches.Builder) int64 {
	t.Helper()
	for _, op := range b.Ops() {
		if !strings.HasPrefix(op.Path, "/spec/volumes") {
			continue
		}
		raw, err := json.Marshal(op.Value)
		if err != nil {
			t.Fatal(err)
		}
		var vols []corev1.Volume
		if json.Unmarshal(raw, &vols) != nil {
			vols = make([]corev1.Volume, 1)
			if err := json.Unmarshal(raw, &vols[0]); err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range vols {
			if v.Name == TokenVolumeName {
				return *v.Projected.Sources[0].ServiceAccountToken.ExpirationSeconds
			}
		}
	}
	return 0
}

func TestConfigJitter(t *testing.T) {
	for in, want := range map[float64]float64{0: 0, -1: 0, 0.1: 0.1, 0.5: 0.5, 3: 0.5} {
		if got := (Config{ExpirationJitter: in}).jitter(); got != want {
			t.Errorf("jitter(%g) = %g, want %g", in, got, want)
		}
	}
}

// The jitter applies to the default lifetime only: a lifetime an annotation asks for is kept.
func TestInjectJitter(t *testing.T) {
	cfg := Config{ExpirationJitter: 0.1, Rand: func(n int64) int64 { return n - 1 }}
	tests := []struct {
		name   string
		saAnn  map[string]string
		podAnn map[string]string
		want   int64
	}{
		{"default lifetime jittered", nil, nil, 86400 - 8640},
		{"ServiceAccount annotation kept", map[string]string{annotations.AWSTokenExpiration: "3600"}, nil, 3600},
		{"Pod annotation kept", nil, map[string]string{annotations.AWSTokenExpiration: "7200"}, 7200},
		{"invalid annotation: the default, jittered", map[string]string{annotations.AWSTokenExpiration: "1d"}, nil, 86400 - 8640},
	}
	for _, tt := range tests {
		sa := &corev1.ServiceAccount{}
		sa.Name = "sa"
		sa.Annotations = map[string]string{annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/r-0"}
		for k, v := range tt.saAnn {
			sa.Annotations[k] = v
		}
		pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}}
		pod.Annotations = tt.podAnn
		b := patches.NewBuilder()
		Inject(pod, sa, cfg, b)
		if got := tokenExpirationOf(t, b); got != tt.want {
			t.Errorf("%s: expirationSeconds %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestTokenExpiration(t *testing.T) {
	const def = 86400
	tests := []struct {
		name     string
		sa, pod  string // "" means absent
		want     int64
		wantWarn bool
	}{
		{"absent", "", "", def, false},
		{"valid", "3600", "", 3600, false},
		{"spaces", " 7200 ", "", 7200, false},
		{"too low clamps", "300", "", 600, false},
		{"zero clamps", "0", "", 600, false},
		{"negative clamps", "-5", "", 600, false},
		{"exactly minimum", "600", "", 600, false},
		{"duration syntax is invalid", "1d", "", def, true},
		{"empty is invalid", " ", "", def, true},
		{"over 2^32 is invalid", "4294967297", "", def, true},
		{"pod overrides sa", "3600", "1200", 1200, false},
		{"invalid pod value does not fall back to sa", "3600", "x", def, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sa, pod := map[string]string{}, map[string]string{}
			if tt.sa != "" {
				sa[annotations.AWSTokenExpiration] = tt.sa
			}
			if tt.pod != "" {
				pod[annotations.AWSTokenExpiration] = tt.pod
			}
			got, asked, warn := tokenExpiration(sa, pod, def)
			if got != tt.want || (warn != "") != tt.wantWarn {
				t.Errorf("tokenExpiration = %d, %q; want %d, warning %v", got, warn, tt.want, tt.wantWarn)
			}
			// Only a value read from an annotation counts as asked for (and is not jittered).
			if wantAsked := (tt.sa != "" || tt.pod != "") && !tt.wantWarn; asked != wantAsked {
				t.Errorf("asked = %v, want %v", asked, wantAsked)
			}
		})
	}
}

func TestConfigDefaultExpiration(t *testing.T) {
	for in, want := range map[int64]int64{0: 86400, -1: 86400, 100: 600, 600: 600, 7200: 7200, 1 << 40: 1 << 32} {
		if got := (Config{DefaultTokenExpiration: in}).defaultExpiration(); got != want {
			t.Errorf("defaultExpiration(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestRegionalSTS(t *testing.T) {
	tests := []struct {
		def      bool
		ann      string // "-" means absent
		want     bool
		wantWarn bool
	}{
		{false, "-", false, false},
		{true, "-", true, false},
		{false, "true", true, false},
		{true, "false", false, false},
		{false, "yes", false, true},
		{true, "yes", true, true},
	}
	for _, tt := range tests {
		ann := map[string]string{}
		if tt.ann != "-" {
			ann[annotations.AWSSTSRegionalEndpoints] = tt.ann
		}
		got, warn := regionalSTS(tt.def, ann)
		if got != tt.want || (warn != "") != tt.wantWarn {
			t.Errorf("regionalSTS(%v, %q) = %v, %q; want %v, warning %v", tt.def, tt.ann, got, warn, tt.want, tt.wantWarn)
		}
	}
}

func TestTokenMount(t *testing.T) {
	tests := []struct {
		name      string
		mounts    []corev1.VolumeMount
		wantPath  string
		wantFound bool
	}{
		{"none", nil, TokenMountPath, false},
		{"other mounts", []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}, TokenMountPath, false},
		{"our volume at the usual path", []corev1.VolumeMount{{Name: TokenVolumeName, MountPath: TokenMountPath}}, TokenMountPath, true},
		{"our volume elsewhere wins", []corev1.VolumeMount{{Name: TokenVolumeName, MountPath: "/custom"}}, "/custom", true},
		{"another volume at the path", []corev1.VolumeMount{{Name: "mine", MountPath: TokenMountPath}}, TokenMountPath, true},
	}
	for _, tt := range tests {
		ctr := fromPod(&corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{VolumeMounts: tt.mounts}}}}).Spec.Containers[0]
		path, found := tokenMount(ctr.VolumeMounts, TokenVolumeName, TokenMountPath)
		if path != tt.wantPath || found != tt.wantFound {
			t.Errorf("%s: tokenMount = %q, %v; want %q, %v", tt.name, path, found, tt.wantPath, tt.wantFound)
		}
	}
}

func TestArrayLen(t *testing.T) {
	if arrayLen(0, true) != -1 || arrayLen(0, false) != 0 || arrayLen(3, false) != 3 {
		t.Error("arrayLen must map an absent array to -1 and keep lengths of present ones")
	}
}

func TestResticRequested(t *testing.T) {
	on := map[string]string{annotations.ResticCredentials: "true"}
	legacy := map[string]string{annotations.LegacyResticCredentials: "true"}
	tests := []struct {
		pod, sa    map[string]string
		want       bool
		wantLegacy bool
	}{
		{nil, nil, false, false},
		{on, nil, true, false},
		{nil, on, true, false},
		{map[string]string{annotations.ResticCredentials: "false"}, nil, false, false},
		{map[string]string{annotations.ResticCredentials: "yes"}, nil, false, false},
		{map[string]string{"restic-credentials": "true"}, nil, false, false},
		// The former key, under our prefix: still honoured on Pods, which nothing guards...
		{legacy, nil, true, true},
		{map[string]string{annotations.LegacyResticCredentials: "false"}, nil, false, false},
		// ...and ignored on ServiceAccounts, where users never could set it.
		{nil, legacy, false, false},
		{legacy, on, true, false},
	}
	for _, tt := range tests {
		if got, l := resticRequested(tt.pod, tt.sa); got != tt.want || l != tt.wantLegacy {
			t.Errorf("resticRequested(%v, %v) = %v, legacy %v; want %v, %v", tt.pod, tt.sa, got, l, tt.want, tt.wantLegacy)
		}
	}
}

func TestSidecarUser(t *testing.T) {
	uid := func(n int64) *int64 { return &n }
	ctr := func(name string, u *int64) corev1.Container {
		c := corev1.Container{Name: name}
		if u != nil {
			c.SecurityContext = &corev1.SecurityContext{RunAsUser: u}
		}
		return c
	}
	tests := []struct {
		name     string
		spec     corev1.PodSpec
		skip     map[string]bool
		want     *int64
		wantWarn bool
	}{
		{"nothing set: image user", corev1.PodSpec{Containers: []corev1.Container{ctr("a", nil)}}, nil, nil, false},
		{"pod-level user", corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: uid(65534)},
			Containers: []corev1.Container{ctr("a", nil)}}, nil, uid(65534), false},
		{"container overrides pod", corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: uid(1)},
			Containers: []corev1.Container{ctr("a", uid(1000))}}, nil, uid(1000), false},
		{"root consumers: image user", corev1.PodSpec{Containers: []corev1.Container{ctr("a", uid(0))}}, nil, nil, false},
		{"one non-root among root", corev1.PodSpec{Containers: []corev1.Container{ctr("a", uid(0)), ctr("b", uid(1000))}}, nil, uid(1000), false},
		{"several users warn", corev1.PodSpec{InitContainers: []corev1.Container{ctr("i", uid(2000))},
			Containers: []corev1.Container{ctr("a", uid(1000))}}, nil, nil, true},
		{"skipped container ignored", corev1.PodSpec{Containers: []corev1.Container{ctr("a", uid(1000)), ctr("istio", uid(1337))}},
			map[string]bool{"istio": true}, uid(1000), false},
	}
	for _, tt := range tests {
		got, warn := sidecarUser(&fromPod(&corev1.Pod{Spec: tt.spec}).Spec, tt.skip)
		if !reflect.DeepEqual(got, tt.want) || (warn != "") != tt.wantWarn {
			t.Errorf("%s: sidecarUser = %v, %q; want %v, warning %v", tt.name, got, warn, tt.want, tt.wantWarn)
		}
	}
}

func TestSidecarContainer(t *testing.T) {
	c := sidecarContainer(Config{SidecarImage: "img"}, nil, nil)
	sc := c.SecurityContext
	switch {
	case c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways:
		t.Error("not a native sidecar (restartPolicy Always)")
	case sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}):
		t.Errorf("security context not locked down: %+v", sc)
	case c.StartupProbe == nil || c.StartupProbe.Exec == nil ||
		!reflect.DeepEqual(c.StartupProbe.Exec.Command, []string{DefaultSidecarBinary, "aws-credentials", "--check"}):
		t.Errorf("startup probe does not check the credentials file: %+v", c.StartupProbe)
	case int(c.StartupProbe.PeriodSeconds)*int(c.StartupProbe.FailureThreshold) < 300:
		t.Error("startup probe gives up before the sidecar's own 5 minute wait")
	case !reflect.DeepEqual(c.Command, []string{DefaultSidecarBinary, "aws-credentials"}):
		t.Errorf("command = %v", c.Command)
	}
	if got := sidecarContainer(Config{SidecarImage: "img", SidecarBinary: "/bin/cw"}, nil, nil).Command[0]; got != "/bin/cw" {
		t.Errorf("SidecarBinary ignored: %s", got)
	}
}

// TestInjectWarnings covers the decisions that only show as warnings.
func TestInjectWarnings(t *testing.T) {
	sa := func(ann map[string]string) *corev1.ServiceAccount {
		s := &corev1.ServiceAccount{}
		s.Name, s.Annotations = "sa", ann
		return s
	}
	role := annotations.AWSRoleARN
	restic := annotations.ResticCredentials
	linux := corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}
	windows := corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/os": "windows"}, Containers: []corev1.Container{{Name: "c"}}}
	tests := []struct {
		name        string
		spec        corev1.PodSpec
		sa          *corev1.ServiceAccount
		cfg         Config
		wantWarn    string // substring; "" means no warning
		wantSidecar bool
	}{
		{"no role, restic asked", linux, sa(map[string]string{restic: "true"}), Config{SidecarImage: "i"}, "has no eks.amazonaws.com/role-arn", false},
		{"no sidecar image", linux, sa(map[string]string{role: "arn", restic: "true"}), Config{}, "no sidecar image", false},
		{"windows", windows, sa(map[string]string{role: "arn", restic: "true"}), Config{SidecarImage: "i"}, "Linux only", false},
		{"sidecar", linux, sa(map[string]string{role: "arn", restic: "true"}), Config{SidecarImage: "i"}, "", true},
		{"nil sa", linux, nil, Config{}, "", false},
	}
	for _, tt := range tests {
		b := patches.NewBuilder()
		pod := &corev1.Pod{Spec: tt.spec}
		ws := Inject(pod, tt.sa, tt.cfg, b)
		joined := strings.Join(ws, "\n")
		if (tt.wantWarn == "") != (joined == "") || !strings.Contains(joined, tt.wantWarn) {
			t.Errorf("%s: warnings %q, want one containing %q", tt.name, joined, tt.wantWarn)
		}
		sidecar := false
		for _, op := range b.Ops() {
			if strings.HasPrefix(op.Path, "/spec/initContainers") {
				sidecar = true
			}
		}
		if sidecar != tt.wantSidecar {
			t.Errorf("%s: sidecar added = %v, want %v", tt.name, sidecar, tt.wantSidecar)
		}
	}
}
