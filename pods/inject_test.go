package pods

import (
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
		if got := isWindows(&tt.spec); got != tt.want {
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
		want string
	}{
		{nil, "sts.amazonaws.com"},
		{map[string]string{annotations.AWSAudience: ""}, "sts.amazonaws.com"},
		{map[string]string{annotations.AWSAudience: " sts.amazonaws.com.cn "}, "sts.amazonaws.com.cn"},
	}
	for _, tt := range tests {
		if got := serviceAccountAudience(tt.ann); got != tt.want {
			t.Errorf("audience(%v) = %q, want %q", tt.ann, got, tt.want)
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
			got, warn := tokenExpiration(sa, pod, def)
			if got != tt.want || (warn != "") != tt.wantWarn {
				t.Errorf("tokenExpiration = %d, %q; want %d, warning %v", got, warn, tt.want, tt.wantWarn)
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
		path, found := tokenMount(tt.mounts, TokenVolumeName, TokenMountPath)
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
	tests := []struct {
		pod, sa map[string]string
		want    bool
	}{
		{nil, nil, false},
		{on, nil, true},
		{nil, on, true},
		{map[string]string{annotations.ResticCredentials: "false"}, nil, false},
		{map[string]string{annotations.ResticCredentials: "yes"}, nil, false},
		{map[string]string{"restic-credentials": "true"}, nil, false},
	}
	for _, tt := range tests {
		if got := resticRequested(tt.pod, tt.sa); got != tt.want {
			t.Errorf("resticRequested(%v, %v) = %v, want %v", tt.pod, tt.sa, got, tt.want)
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
		got, warn := sidecarUser(&tt.spec, tt.skip)
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
