package admission

import (
	"encoding/base64"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"unicode/utf8"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// The response and its patch are written by hand into a pooled buffer instead of through
// encoding/json's reflection: on the Pod review that was about a sixth of the handler's CPU and
// most of its garbage (the patch marshalled into one slice, then base64-copied into another by
// the response's Marshal). The output is byte for byte what encoding/json.Marshal writes for the
// same values, HTML escaping included (TestAppend*MatchesEncodingJSON, FuzzAppendString): the
// apiserver reads either, but equal output keeps the tests' expectations and the fuzz targets'
// reference meaningful. Values outside the fast paths (a whole Volume or Container, anything a
// plugin adds later) go through encoding/json.Marshal, whose output for a nested value is the
// same as for a top-level one.

// appendReview appends the JSON of out, as encoding/json.Marshal(out) writes it.
func appendReview(dst []byte, out *reviewOut) []byte {
	dst = append(dst, `{"apiVersion":`...)
	dst = appendString(dst, out.APIVersion)
	dst = append(dst, `,"kind":`...)
	dst = appendString(dst, out.Kind)
	dst = append(dst, `,"response":{"uid":`...)
	r := &out.Response
	dst = appendString(dst, string(r.UID))
	dst = append(dst, `,"allowed":`...)
	dst = strconv.AppendBool(dst, r.Allowed)
	if r.Status != nil {
		dst = append(dst, `,"status":{"code":`...)
		dst = strconv.AppendInt(dst, int64(r.Status.Code), 10)
		dst = append(dst, `,"message":`...)
		dst = appendString(dst, r.Status.Message)
		dst = append(dst, '}')
	}
	if len(r.Patch) > 0 {
		dst = append(dst, `,"patch":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, r.Patch)
		dst = append(dst, '"')
	}
	if r.PatchType != nil {
		dst = append(dst, `,"patchType":`...)
		dst = appendString(dst, *r.PatchType)
	}
	if len(r.Warnings) > 0 {
		dst = append(dst, `,"warnings":[`...)
		for i, w := range r.Warnings {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, w)
		}
		dst = append(dst, ']')
	}
	return append(dst, "}}"...)
}

// appendPatch appends ops as an RFC 6902 JSON patch: what encoding/json.Marshal writes for a
// slice of {op, path, value (omitted when nil)} structs. It never goes through
// jsonpatch.Operation's own MarshalJSON, which builds a map per operation.
func appendPatch(dst []byte, ops []jsonpatch.Operation) ([]byte, error) {
	dst = append(dst, '[')
	for i := range ops {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"op":`...)
		dst = appendString(dst, ops[i].Operation)
		dst = append(dst, `,"path":`...)
		dst = appendString(dst, ops[i].Path)
		if ops[i].Value != nil {
			dst = append(dst, `,"value":`...)
			var err error
			if dst, err = appendValue(dst, ops[i].Value); err != nil {
				return nil, err
			}
		}
		dst = append(dst, '}')
	}
	return append(dst, ']'), nil
}

// appendObject appends m as encoding/json.Marshal writes a map: null when nil, keys sorted.
func appendObject[V any](dst []byte, m map[string]V, appendV func([]byte, V) ([]byte, error)) ([]byte, error) {
	if m == nil {
		return append(dst, "null"...), nil
	}
	dst = append(dst, '{')
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, k)
		dst = append(dst, ':')
		var err error
		if dst, err = appendV(dst, m[k]); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

// appendValue appends v as encoding/json.Marshal(v) writes it, by hand for the values patches
// carry on the hot paths (strings, booleans, string maps, one-element arrays, env vars and
// volume mounts), through encoding/json for anything else.
func appendValue(dst []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case string:
		return appendString(dst, v), nil
	case bool:
		return strconv.AppendBool(dst, v), nil
	case map[string]string:
		return appendObject(dst, v, func(dst []byte, s string) ([]byte, error) { return appendString(dst, s), nil })
	case map[string]any:
		return appendObject(dst, v, appendValue)
	case []any:
		if v == nil {
			return append(dst, "null"...), nil
		}
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err error
			if dst, err = appendValue(dst, e); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	case *corev1.EnvVar:
		if v != nil {
			return appendValue(dst, *v)
		}
	case corev1.EnvVar:
		if v.ValueFrom == nil {
			dst = append(dst, `{"name":`...)
			dst = appendString(dst, v.Name)
			if v.Value != "" {
				dst = append(dst, `,"value":`...)
				dst = appendString(dst, v.Value)
			}
			return append(dst, '}'), nil
		}
	case corev1.VolumeMount:
		if v.RecursiveReadOnly == nil && v.MountPropagation == nil && len(v.BindMountOptions) == 0 {
			dst = append(dst, `{"name":`...)
			dst = appendString(dst, v.Name)
			if v.ReadOnly {
				dst = append(dst, `,"readOnly":true`...)
			}
			dst = append(dst, `,"mountPath":`...)
			dst = appendString(dst, v.MountPath)
			if v.SubPath != "" {
				dst = append(dst, `,"subPath":`...)
				dst = appendString(dst, v.SubPath)
			}
			if v.SubPathExpr != "" {
				dst = append(dst, `,"subPathExpr":`...)
				dst = appendString(dst, v.SubPathExpr)
			}
			return append(dst, '}'), nil
		}
	case corev1.Volume:
		if d, ok := appendTokenVolume(dst, &v); ok {
			return d, nil
		}
	case nil:
		return append(dst, "null"...), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(dst, b...), nil
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string the way encoding/json writes it: '"' and '\\'
// backslash-escaped; \b, \f, \n, \r and \t as such; other control characters and the HTML
// characters <, > and & as \u00XX; U+2028 and U+2029 as \u2028 and \u2029 (JavaScript line
// terminators); each byte of invalid UTF-8 as \ufffd. Everything else is copied as is.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendTokenVolume writes a projected volume of ServiceAccount tokens only (the IRSA token
// volume every injected Pod gets), the one Volume shape on a hot path; ok is false for any other
// volume, which encoding/json writes. The struct comparisons make every other source field,
// present or added by a later k8s.io/api, send the volume to encoding/json.
func appendTokenVolume(dst []byte, v *corev1.Volume) ([]byte, bool) {
	p := v.Projected
	if p == nil || v.VolumeSource != (corev1.VolumeSource{Projected: p}) || p.Sources == nil {
		return dst, false
	}
	for i := range p.Sources {
		if t := p.Sources[i].ServiceAccountToken; t == nil || p.Sources[i] != (corev1.VolumeProjection{ServiceAccountToken: t}) {
			return dst, false
		}
	}
	dst = append(dst, `{"name":`...)
	dst = appendString(dst, v.Name)
	dst = append(dst, `,"projected":{"sources":[`...)
	for i := range p.Sources {
		if i > 0 {
			dst = append(dst, ',')
		}
		t := p.Sources[i].ServiceAccountToken
		dst = append(dst, `{"serviceAccountToken":{`...)
		if t.Audience != "" {
			dst = append(dst, `"audience":`...)
			dst = appendString(dst, t.Audience)
			dst = append(dst, ',')
		}
		if t.ExpirationSeconds != nil {
			dst = append(dst, `"expirationSeconds":`...)
			dst = strconv.AppendInt(dst, *t.ExpirationSeconds, 10)
			dst = append(dst, ',')
		}
		dst = append(dst, `"path":`...)
		dst = appendString(dst, t.Path)
		if t.User != nil {
			dst = append(dst, `,"user":`...)
			dst = strconv.AppendInt(dst, *t.User, 10)
		}
		dst = append(dst, "}}"...)
	}
	dst = append(dst, ']')
	if p.DefaultMode != nil {
		dst = append(dst, `,"defaultMode":`...)
		dst = strconv.AppendInt(dst, int64(*p.DefaultMode), 10)
	}
	if p.DefaultUser != nil {
		dst = append(dst, `,"defaultUser":`...)
		dst = strconv.AppendInt(dst, *p.DefaultUser, 10)
	}
	return append(dst, "}}"...), true
}
