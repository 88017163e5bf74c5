package pods

import (
	"fmt"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	corev1 "k8s.io/api/core/v1"
)

// decodePod reads from the raw Pod only what Inject looks at, into a skeleton corev1.Pod.
//
// Why not decode the whole corev1.Pod: on the 4 KB KubeStash backup Pod that is most of the
// plugin's CPU (resource quantities, timestamps and managedFields nobody here reads). JSON v2
// (the decoder the admission package uses for the review itself) into podView, a struct of only
// the fields Inject reads, skips everything else inside the tokenizer. It replaced a 385-line
// hand-written walker: BenchmarkDecode measured 36 allocations and 5.5 KB against the walker's
// 76 and 7.7 KB, and 0.45 to 0.8 of its CPU (a loaded 2-vCPU machine), so nothing was left to
// justify a second JSON dialect.
//
// Contract kept by the tests: for every input the apiserver's decoder (sigs.k8s.io/json, case
// sensitive) accepts into a corev1.Pod and that has no duplicate keys and is valid UTF-8,
// decodePod succeeds and yields the same values for the fields Inject reads
// (TestDecodePodMatchesFullDecode over the fixtures, FuzzDecodePod beyond them), and Inject
// gives the same patch on the skeleton as on the full Pod (TestDecodeViewEquivalent). Whoever
// makes Inject read a new field must add it to podView and toPod.
//
// JSON v2's defaults are the stricter ones on purpose: duplicate keys and invalid UTF-8 are
// refused (an apiserver never sends either; a body that has them was not written by one, and
// duplicate keys are how a reader is made to see another object than the writer), keys match
// case-sensitively like the apiserver's decoder, and a null value is the zero value.
func decodePod(raw []byte) (*corev1.Pod, error) {
	var v podView
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("decoding the Pod: %w", err)
	}
	return v.toPod(), nil
}

// decodePodFrom is decodePod reading the Pod from dec, the review's decoder (Plugin.DecodeObject).
func decodePodFrom(dec *jsontext.Decoder) (*corev1.Pod, error) {
	var v podView
	if err := json.UnmarshalDecode(dec, &v); err != nil {
		return nil, err
	}
	return v.toPod(), nil
}

// podView is the part of a Pod that Inject reads. Slices stay nil when absent and empty when
// present but empty, since the patches for the two differ.
type podView struct {
	Metadata struct {
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations"`
		Labels      map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		ServiceAccountName string            `json:"serviceAccountName"`
		NodeSelector       map[string]string `json:"nodeSelector"`
		OS                 *struct {
			Name corev1.OSName `json:"name"`
		} `json:"os"`
		SecurityContext *runAsView      `json:"securityContext"`
		Volumes         []nameView      `json:"volumes"`
		InitContainers  []containerView `json:"initContainers"`
		Containers      []containerView `json:"containers"`
	} `json:"spec"`
}

type nameView struct {
	Name string `json:"name"`
}

type runAsView struct {
	RunAsUser *int64 `json:"runAsUser"`
}

type containerView struct {
	Name         string     `json:"name"`
	Env          []nameView `json:"env"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
	} `json:"volumeMounts"`
	SecurityContext *runAsView `json:"securityContext"`
}

func (v *podView) toPod() *corev1.Pod {
	p := &corev1.Pod{}
	p.Namespace, p.Annotations, p.Labels = v.Metadata.Namespace, v.Metadata.Annotations, v.Metadata.Labels
	s, vs := &p.Spec, &v.Spec
	s.ServiceAccountName, s.NodeSelector = vs.ServiceAccountName, vs.NodeSelector
	if vs.OS != nil {
		s.OS = &corev1.PodOS{Name: vs.OS.Name}
	}
	if vs.SecurityContext != nil {
		s.SecurityContext = &corev1.PodSecurityContext{RunAsUser: vs.SecurityContext.RunAsUser}
	}
	if vs.Volumes != nil {
		s.Volumes = make([]corev1.Volume, len(vs.Volumes))
		for i, vol := range vs.Volumes {
			s.Volumes[i].Name = vol.Name
		}
	}
	s.InitContainers, s.Containers = toContainers(vs.InitContainers), toContainers(vs.Containers)
	return p
}

func toContainers(vs []containerView) []corev1.Container {
	if vs == nil {
		return nil
	}
	cs := make([]corev1.Container, len(vs))
	for i, v := range vs {
		c := &cs[i]
		c.Name = v.Name
		if v.Env != nil {
			c.Env = make([]corev1.EnvVar, len(v.Env))
			for j, e := range v.Env {
				c.Env[j].Name = e.Name
			}
		}
		if v.VolumeMounts != nil {
			c.VolumeMounts = make([]corev1.VolumeMount, len(v.VolumeMounts))
			for j, m := range v.VolumeMounts {
				c.VolumeMounts[j] = corev1.VolumeMount{Name: m.Name, MountPath: m.MountPath}
			}
		}
		if v.SecurityContext != nil {
			c.SecurityContext = &corev1.SecurityContext{RunAsUser: v.SecurityContext.RunAsUser}
		}
	}
	return cs
}
