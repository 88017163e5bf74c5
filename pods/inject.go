package pods

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

// Inject adds IRSA (and, when asked for, the restic credentials sidecar) to pod, whose
// ServiceAccount is sa, as operations on b. pod must be decoded from the raw object the patch
// applies to: array indices and lengths come from it. It returns admission warnings (invalid
// annotations, a sidecar that cannot be added). A ServiceAccount without
// eks.amazonaws.com/role-arn leaves the Pod alone.
func Inject(pod *corev1.Pod, sa *corev1.ServiceAccount, cfg Config, b *patches.Builder) (warnings []string) {
	warnings, _ = inject(fromPod(pod), sa, cfg, b)
	return warnings
}

// inject is Inject on the Pod's view (what the plugin decodes), also reporting whether it added
// the sidecar, for the metrics.
func inject(pod *podView, sa *corev1.ServiceAccount, cfg Config, b *patches.Builder) (warnings []string, sidecarAdded bool) {
	if sa == nil {
		return nil, false
	}
	roleARN := sa.Annotations[annotations.AWSRoleARN]
	restic, legacy := resticRequested(pod.Metadata.Annotations, sa.Annotations)
	if legacy {
		warnings = append(warnings, fmt.Sprintf("%s is deprecated: use %s", annotations.LegacyResticCredentials, annotations.ResticCredentials))
	}
	if roleARN == "" {
		if restic {
			warnings = append(warnings, fmt.Sprintf("%s requested, but ServiceAccount %s has no %s: no AWS credentials injected",
				annotations.ResticCredentials, sa.Name, annotations.AWSRoleARN))
		}
		return warnings, false
	}
	windows := isWindows(&pod.Spec)
	tokenDir := cfg.mountPath()
	if windows {
		tokenDir = cfg.windowsMountPath()
	}
	exp, asked, w := tokenExpiration(sa.Annotations, pod.Metadata.Annotations, cfg.defaultExpiration())
	warnings = appendNonEmpty(warnings, w)
	regional, w := regionalSTS(cfg.RegionalSTS, sa.Annotations)
	warnings = appendNonEmpty(warnings, w)
	if restic {
		switch {
		case windows:
			restic = false
			warnings = append(warnings, fmt.Sprintf("%s ignored: the %s sidecar runs on Linux only", annotations.ResticCredentials, SidecarName))
		case cfg.SidecarImage == "":
			restic = false
			warnings = append(warnings, fmt.Sprintf("%s ignored: this webhook has no sidecar image configured", annotations.ResticCredentials))
		}
	}

	skip := skipSet(pod.Metadata.Annotations[annotations.AWSSkipContainers])
	c := containerPatch{
		roleARN:  roleARN,
		tokenDir: tokenDir,
		windows:  windows,
		region:   cfg.Region,
		regional: regional,
		restic:   restic,
	}
	for i := range pod.Spec.InitContainers {
		if !skip[pod.Spec.InitContainers[i].Name] {
			c.apply(b, "/spec/initContainers/"+strconv.Itoa(i), &pod.Spec.InitContainers[i])
		}
	}
	for i := range pod.Spec.Containers {
		if !skip[pod.Spec.Containers[i].Name] {
			c.apply(b, "/spec/containers/"+strconv.Itoa(i), &pod.Spec.Containers[i])
		}
	}

	nVolumes := arrayLen(len(pod.Spec.Volumes), pod.Spec.Volumes == nil)
	if !hasVolume(pod.Spec.Volumes, TokenVolumeName) {
		if !asked {
			exp = jitterExpiration(exp, cfg.jitter(), cfg.randN)
		}
		b.Append("/spec/volumes", nVolumes, tokenVolume(serviceAccountAudience(sa.Annotations, cfg.audience()), exp))
	}
	if !restic {
		return warnings, false
	}
	if !hasVolume(pod.Spec.Volumes, CredentialsVolumeName) {
		b.Append("/spec/volumes", nVolumes, credentialsVolume())
	}
	if hasContainer(&pod.Spec, SidecarName) {
		return warnings, false
	}
	uid, w := sidecarUser(&pod.Spec, skip)
	warnings = appendNonEmpty(warnings, w)
	sidecar := sidecarContainer(cfg, c.env(joinPath(cfg.mountPath(), TokenFileName, false)), uid)
	// The sidecar goes first among the init containers, so it is running (and, through its
	// startup probe, has written the file) before any other init container starts. Every other
	// operation above addresses the existing init containers by their original index, so this
	// insert, which shifts them, must be the last operation on /spec/initContainers. Insert
	// needs an existing array; when there is none, Append creates it.
	if pod.Spec.InitContainers == nil {
		b.Append("/spec/initContainers", -1, sidecar)
	} else {
		b.Insert("/spec/initContainers", 0, sidecar)
	}
	return warnings, true
}

// containerPatch holds what every container gets.
type containerPatch struct {
	roleARN, tokenDir, region string
	windows, regional, restic bool
}

// env is the IRSA environment for a container whose token file is tokenFile, in the order the
// EKS webhook's documentation lists it, plus the restic credentials file when enabled.
func (c containerPatch) env(tokenFile string) []corev1.EnvVar {
	env := make([]corev1.EnvVar, 0, 6)
	env = append(env, corev1.EnvVar{Name: EnvRoleARN, Value: c.roleARN}, corev1.EnvVar{Name: EnvTokenFile, Value: tokenFile})
	if c.region != "" {
		env = append(env, corev1.EnvVar{Name: EnvRegion, Value: c.region}, corev1.EnvVar{Name: EnvDefaultRegion, Value: c.region})
	}
	if c.regional {
		env = append(env, corev1.EnvVar{Name: EnvRegionalEndpoints, Value: "regional"})
	}
	if c.restic {
		env = append(env, corev1.EnvVar{Name: EnvCredentialsFile, Value: CredentialsFile})
	}
	return env
}

// apply appends to one container (at JSON pointer base) whatever of the IRSA env and mounts it
// lacks.
func (c containerPatch) apply(b *patches.Builder, base string, ctr *containerView) {
	mountPath, hasMount := tokenMount(ctr.VolumeMounts, TokenVolumeName, c.tokenDir)
	nEnv := arrayLen(len(ctr.Env), ctr.Env == nil)
	// The two region variables go together: a container that sets either keeps its region, and
	// must not get the other one pointing somewhere else.
	hasRegion := hasEnv(ctr.Env, EnvRegion) || hasEnv(ctr.Env, EnvDefaultRegion)
	envPath := base + "/env"
	env := c.env(joinPath(mountPath, TokenFileName, c.windows))
	for i := range env {
		e := &env[i] // a pointer into env: no copy boxed per variable; the patch's JSON is the same
		if hasEnv(ctr.Env, e.Name) || (hasRegion && (e.Name == EnvRegion || e.Name == EnvDefaultRegion)) {
			continue
		}
		b.Append(envPath, nEnv, e)
	}
	nMounts := arrayLen(len(ctr.VolumeMounts), ctr.VolumeMounts == nil)
	if !hasMount {
		b.Append(base+"/volumeMounts", nMounts, corev1.VolumeMount{Name: TokenVolumeName, ReadOnly: true, MountPath: c.tokenDir})
	}
	if c.restic {
		if _, ok := tokenMount(ctr.VolumeMounts, CredentialsVolumeName, CredentialsMountPath); !ok {
			b.Append(base+"/volumeMounts", nMounts, corev1.VolumeMount{Name: CredentialsVolumeName, ReadOnly: true, MountPath: CredentialsMountPath})
		}
	}
}

// arrayLen is the n patches.Builder.Append expects: -1 for an absent array. A decoded nil slice
// means the key was absent or null; "[]" decodes to an empty non-nil slice.
func arrayLen(n int, absent bool) int {
	if absent {
		return -1
	}
	return n
}

func appendNonEmpty(ws []string, w string) []string {
	if w == "" {
		return ws
	}
	return append(ws, w)
}

// skipSet parses eks.amazonaws.com/skip-containers ("a, b,c").
func skipSet(v string) map[string]bool {
	if v == "" {
		return nil
	}
	m := map[string]bool{}
	for _, name := range strings.Split(v, ",") {
		if name = strings.TrimSpace(name); name != "" {
			m[name] = true
		}
	}
	return m
}

// isWindows: the EKS webhook keys on the nodeSelector; spec.os is the newer, explicit field.
func isWindows(spec *podSpecView) bool {
	if spec.OS != nil && spec.OS.Name == corev1.Windows {
		return true
	}
	return spec.NodeSelector[corev1.LabelOSStable] == "windows"
}

func joinPath(dir, name string, windows bool) string {
	sep := "/"
	if windows {
		sep = `\`
	}
	return strings.TrimRight(dir, sep) + sep + name
}

// serviceAccountAudience: the ServiceAccount's eks.amazonaws.com/audience, else def (the
// configured default audience).
func serviceAccountAudience(saAnn map[string]string, def string) string {
	if a := strings.TrimSpace(saAnn[annotations.AWSAudience]); a != "" {
		return a
	}
	return def
}

// tokenExpiration reads eks.amazonaws.com/token-expiration, the Pod's annotation overriding the
// ServiceAccount's as with the EKS webhook. Values under MinTokenExpiration are raised to it
// (the apiserver would reject them); unparsable or too large values fall back to def with a
// warning rather than failing the Pod. asked reports whether an annotation's value is used,
// which the jitter must then leave alone.
func tokenExpiration(saAnn, podAnn map[string]string, def int64) (exp int64, asked bool, warning string) {
	v, ok := podAnn[annotations.AWSTokenExpiration]
	if !ok {
		v, ok = saAnn[annotations.AWSTokenExpiration]
	}
	if !ok {
		return def, false, ""
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n > maxTokenExpiration {
		return def, false, fmt.Sprintf("invalid %s %q, using %d seconds", annotations.AWSTokenExpiration, v, def)
	}
	return max(n, MinTokenExpiration), true, ""
}

// jitterExpiration takes up to frac of exp off at random (randN(n) is uniform in [0, n)), never
// going under MinTokenExpiration. The kubelet refreshes a projected token at 80 % of its
// lifetime, and the SDKs then call STS: without jitter, the hundreds of backup Pods a schedule
// starts at the same minute would all do so at the same moment, every lifetime.
func jitterExpiration(exp int64, frac float64, randN func(int64) int64) int64 {
	span := int64(float64(exp) * frac)
	if span <= 0 || exp <= MinTokenExpiration {
		return exp
	}
	return max(exp-randN(span+1), MinTokenExpiration)
}

// regionalSTS: the ServiceAccount annotation, when it parses, overrides the configured default
// in both directions, matching the EKS webhook.
func regionalSTS(def bool, saAnn map[string]string) (bool, string) {
	v, ok := saAnn[annotations.AWSSTSRegionalEndpoints]
	if !ok {
		return def, ""
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return def, fmt.Sprintf("invalid %s %q, using %t", annotations.AWSSTSRegionalEndpoints, v, def)
	}
	return b, ""
}

func hasEnv(env []nameView, name string) bool {
	for i := range env {
		if env[i].Name == name {
			return true
		}
	}
	return false
}

func hasVolume(vols []nameView, name string) bool {
	for i := range vols {
		if vols[i].Name == name {
			return true
		}
	}
	return false
}

// tokenMount finds a mount of volume name, or any mount at dir, and returns its path; else dir.
// A mount of the volume at another path (a customised EKS webhook) wins, so the token file env
// var points where the token really is.
func tokenMount(mounts []mountView, name, dir string) (string, bool) {
	for i := range mounts {
		if mounts[i].Name == name {
			return mounts[i].MountPath, true
		}
	}
	for i := range mounts {
		if mounts[i].MountPath == dir {
			return dir, true
		}
	}
	return dir, false
}

func tokenVolume(audience string, expirationSeconds int64) corev1.Volume {
	return corev1.Volume{
		Name: TokenVolumeName,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience:          audience,
				ExpirationSeconds: &expirationSeconds,
				Path:              TokenFileName,
			}}},
		}},
	}
}
