package pods

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
)

// decodePod reads from the raw Pod only what Inject looks at, into a skeleton corev1.Pod.
//
// Why not json.Unmarshal into corev1.Pod: on the 4 KB KubeStash backup Pod that cost about 70 %
// of the plugin's CPU (encoding/json validates the whole document, then scans it again while
// decoding resource quantities, timestamps and managedFields nobody here reads); a reduced struct
// only halved it. This walker skips what it does not need at byte speed and decodes the few
// values it does need with encoding/json, so escapes and UTF-8 are handled exactly as there.
//
// Contract kept by the tests: for every input that json.Unmarshal accepts into a corev1.Pod,
// decodePod succeeds and yields the same values for the fields Inject reads
// (TestDecodePodMatchesFullDecode over the fixtures, FuzzDecodePod beyond them), and Inject
// gives the same patch on the skeleton as on the full Pod (TestDecodeViewEquivalent). Whoever
// makes Inject read a new field must add it here.
//
// Keys match case-sensitively, like the apiserver's decoder. A null value is treated as absent,
// as encoding/json does; an empty array stays distinct from an absent one, since patches for the
// two differ.
func decodePod(raw []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	err := eachMember(bytes.TrimSpace(raw), func(k, v []byte) error {
		switch string(k) {
		case "metadata":
			return eachMember(v, func(k, v []byte) error {
				switch string(k) {
				case "namespace":
					return decodeString(v, &pod.Namespace)
				case "annotations":
					return decodeStringMap(v, &pod.Annotations)
				case "labels":
					return decodeStringMap(v, &pod.Labels)
				}
				return nil
			})
		case "spec":
			return decodeSpec(v, &pod.Spec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return pod, nil
}

func decodeSpec(raw []byte, s *corev1.PodSpec) error {
	return eachMember(raw, func(k, v []byte) error {
		switch string(k) {
		case "serviceAccountName":
			return decodeString(v, &s.ServiceAccountName)
		case "nodeSelector":
			return decodeStringMap(v, &s.NodeSelector)
		case "os":
			if isNull(v) {
				s.OS = nil
				return nil
			}
			if s.OS == nil {
				s.OS = &corev1.PodOS{}
			}
			return eachMember(v, func(k, v []byte) error {
				if string(k) == "name" {
					var name string
					err := decodeString(v, &name)
					s.OS.Name = corev1.OSName(name)
					return err
				}
				return nil
			})
		case "securityContext":
			if isNull(v) {
				s.SecurityContext = nil
				return nil
			}
			if s.SecurityContext == nil {
				s.SecurityContext = &corev1.PodSecurityContext{}
			}
			return decodeRunAsUser(v, &s.SecurityContext.RunAsUser)
		case "volumes":
			s.Volumes = nil
			return eachElement(v, func(v []byte) error {
				s.Volumes = append(s.Volumes, corev1.Volume{})
				vol := &s.Volumes[len(s.Volumes)-1]
				return eachMember(v, func(k, v []byte) error {
					if string(k) == "name" {
						return decodeString(v, &vol.Name)
					}
					return nil
				})
			}, func() { s.Volumes = []corev1.Volume{} })
		case "initContainers":
			return decodeContainers(v, &s.InitContainers)
		case "containers":
			return decodeContainers(v, &s.Containers)
		}
		return nil
	})
}

func decodeContainers(raw []byte, cs *[]corev1.Container) error {
	*cs = nil
	return eachElement(raw, func(v []byte) error {
		*cs = append(*cs, corev1.Container{})
		c := &(*cs)[len(*cs)-1]
		return eachMember(v, func(k, v []byte) error {
			switch string(k) {
			case "name":
				return decodeString(v, &c.Name)
			case "env":
				c.Env = nil
				return eachElement(v, func(v []byte) error {
					c.Env = append(c.Env, corev1.EnvVar{})
					e := &c.Env[len(c.Env)-1]
					return eachMember(v, func(k, v []byte) error {
						if string(k) == "name" {
							return decodeString(v, &e.Name)
						}
						return nil
					})
				}, func() { c.Env = []corev1.EnvVar{} })
			case "volumeMounts":
				c.VolumeMounts = nil
				return eachElement(v, func(v []byte) error {
					c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{})
					m := &c.VolumeMounts[len(c.VolumeMounts)-1]
					return eachMember(v, func(k, v []byte) error {
						switch string(k) {
						case "name":
							return decodeString(v, &m.Name)
						case "mountPath":
							return decodeString(v, &m.MountPath)
						}
						return nil
					})
				}, func() { c.VolumeMounts = []corev1.VolumeMount{} })
			case "securityContext":
				if isNull(v) {
					c.SecurityContext = nil
					return nil
				}
				if c.SecurityContext == nil {
					c.SecurityContext = &corev1.SecurityContext{}
				}
				return decodeRunAsUser(v, &c.SecurityContext.RunAsUser)
			}
			return nil
		})
	}, func() { *cs = []corev1.Container{} })
}

func decodeRunAsUser(raw []byte, dst **int64) error {
	return eachMember(raw, func(k, v []byte) error {
		if string(k) != "runAsUser" {
			return nil
		}
		*dst = nil
		if isNull(v) {
			return nil
		}
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return fmt.Errorf("runAsUser: %w", err)
		}
		*dst = &n
		return nil
	})
}

func decodeString(raw []byte, dst *string) error {
	if isNull(raw) {
		return nil // encoding/json leaves the value alone on null
	}
	// Fast path for the common case; anything with escapes or non-ASCII goes to encoding/json
	// so the result is the same byte for byte.
	if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' {
		inner := raw[1 : len(raw)-1]
		if bytes.IndexByte(inner, '\\') < 0 && bytes.IndexByte(inner, '"') < 0 && isASCII(inner) {
			*dst = string(inner)
			return nil
		}
	}
	return json.Unmarshal(raw, dst)
}

func decodeStringMap(raw []byte, dst *map[string]string) error {
	if isNull(raw) {
		*dst = nil
		return nil
	}
	// Annotation and selector maps are small: encoding/json it is.
	return json.Unmarshal(raw, dst)
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func isNull(v []byte) bool { return string(v) == "null" }

var errSyntax = errors.New("malformed JSON")

// eachMember calls fn with the raw key (between the quotes, still escaped only if it contains a
// backslash, which is then unescaped) and the raw value of every member of the object raw.
// null is an object without members.
func eachMember(raw []byte, fn func(k, v []byte) error) error {
	i := skipSpace(raw, 0)
	if i < len(raw) && isNull(raw[i:]) {
		return nil
	}
	if i >= len(raw) || raw[i] != '{' {
		return fmt.Errorf("%w: want an object", errSyntax)
	}
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return nil
	}
	for {
		if i >= len(raw) || raw[i] != '"' {
			return fmt.Errorf("%w: want a key", errSyntax)
		}
		end, err := skipString(raw, i)
		if err != nil {
			return err
		}
		key := raw[i+1 : end-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var s string
			if err := json.Unmarshal(raw[i:end], &s); err != nil {
				return err
			}
			key = []byte(s)
		}
		i = skipSpace(raw, end)
		if i >= len(raw) || raw[i] != ':' {
			return fmt.Errorf("%w: want ':'", errSyntax)
		}
		i = skipSpace(raw, i+1)
		vend, err := skipValue(raw, i)
		if err != nil {
			return err
		}
		if err := fn(key, raw[i:vend]); err != nil {
			return err
		}
		i = skipSpace(raw, vend)
		if i >= len(raw) {
			return fmt.Errorf("%w: unterminated object", errSyntax)
		}
		switch raw[i] {
		case ',':
			i = skipSpace(raw, i+1)
		case '}':
			return nil
		default:
			return fmt.Errorf("%w: want ',' or '}'", errSyntax)
		}
	}
}

// eachElement calls fn with every element of the array raw; present is called first when raw
// is an array (even an empty one), so callers can tell an empty array from null.
func eachElement(raw []byte, fn func(v []byte) error, present func()) error {
	i := skipSpace(raw, 0)
	if i < len(raw) && isNull(raw[i:]) {
		return nil
	}
	if i >= len(raw) || raw[i] != '[' {
		return fmt.Errorf("%w: want an array", errSyntax)
	}
	present()
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == ']' {
		return nil
	}
	for {
		end, err := skipValue(raw, i)
		if err != nil {
			return err
		}
		if err := fn(raw[i:end]); err != nil {
			return err
		}
		i = skipSpace(raw, end)
		if i >= len(raw) {
			return fmt.Errorf("%w: unterminated array", errSyntax)
		}
		switch raw[i] {
		case ',':
			i = skipSpace(raw, i+1)
		case ']':
			return nil
		default:
			return fmt.Errorf("%w: want ',' or ']'", errSyntax)
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'. It jumps from quote to
// quote (bytes.IndexByte is vectorised); a quote preceded by an odd number of backslashes is
// escaped.
func skipString(b []byte, i int) (int, error) {
	j := i + 1
	for {
		k := bytes.IndexByte(b[j:], '"')
		if k < 0 {
			return 0, fmt.Errorf("%w: unterminated string", errSyntax)
		}
		q := j + k
		n := 0
		for p := q - 1; p > i && b[p] == '\\'; p-- {
			n++
		}
		if n%2 == 0 {
			return q + 1, nil
		}
		j = q + 1
	}
}

// skipValue returns the index after the value starting at b[i]. It follows strings and counts
// brackets, and does not check the spelling of literals: the document is valid JSON (the
// admission server decoded the review around it), and the values that are read are decoded
// strictly. Malformed input yields an error or wrong ranges, never a panic.
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, fmt.Errorf("%w: want a value", errSyntax)
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, err := skipString(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("%w: unterminated value", errSyntax)
	case ',', '}', ']', ':':
		return 0, fmt.Errorf("%w: want a value", errSyntax)
	default:
		// A number or literal runs to the next delimiter.
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\n' && b[j] != '\t' && b[j] != '\r' {
			j++
		}
		return j, nil
	}
}
