package iammodel

import "unicode/utf8"

// maxJSONDepth is encoding/json's nesting limit: a document nested deeper is not valid JSON to
// json.Compact, so not to the model either.
const maxJSONDepth = 10000

// compactSize is utf8.RuneCount of json.Compact(doc) and whether doc is valid JSON (as
// json.Valid decides), in one pass that allocates nothing. Every trust policy write is measured
// against the quota: json.Compact into a buffer was a tenth of the simulated month's CPU, for
// documents the Assigner already renders compact. Compacting drops only whitespace outside
// strings, all ASCII, so the size is the document's characters minus those.
func compactSize(doc string) (size int, ok bool) {
	v := jsonValidator{s: doc}
	v.space()
	if !v.value(0) {
		return 0, false
	}
	v.space()
	if v.i != len(doc) {
		return 0, false
	}
	return runeCount(doc) - v.ws, true
}

// runeCount is utf8.RuneCountInString(s), eight bytes at a time while they are ASCII: a trust
// policy is, and counting it rune by rune was 3 % of benchtool sim's CPU.
func runeCount(s string) int {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		if s[i]|s[i+1]|s[i+2]|s[i+3]|s[i+4]|s[i+5]|s[i+6]|s[i+7] >= utf8.RuneSelf {
			break
		}
	}
	return i + utf8.RuneCountInString(s[i:])
}

// jsonValidator walks a document by the grammar of RFC 8259 as encoding/json's scanner accepts
// it (any byte from 0x20 up inside strings, valid UTF-8 or not), counting whitespace outside
// strings in ws.
type jsonValidator struct {
	s  string
	i  int
	ws int
}

func (v *jsonValidator) space() {
	for v.i < len(v.s) {
		switch v.s[v.i] {
		case ' ', '\t', '\n', '\r':
			v.i++
			v.ws++
		default:
			return
		}
	}
}

// value reads one value at v.i; depth is how many objects and arrays enclose it.
func (v *jsonValidator) value(depth int) bool {
	if v.i >= len(v.s) {
		return false
	}
	switch c := v.s[v.i]; {
	case c == '{':
		return v.object(depth + 1)
	case c == '[':
		return v.array(depth + 1)
	case c == '"':
		return v.str()
	case c == '-' || c >= '0' && c <= '9':
		return v.number()
	case c == 't':
		return v.literal("true")
	case c == 'f':
		return v.literal("false")
	case c == 'n':
		return v.literal("null")
	}
	return false
}

func (v *jsonValidator) literal(lit string) bool {
	if len(v.s)-v.i < len(lit) || v.s[v.i:v.i+len(lit)] != lit {
		return false
	}
	v.i += len(lit)
	return true
}

func (v *jsonValidator) object(depth int) bool {
	if depth > maxJSONDepth {
		return false
	}
	v.i++ // {
	v.space()
	if v.i < len(v.s) && v.s[v.i] == '}' {
		v.i++
		return true
	}
	for {
		if v.i >= len(v.s) || v.s[v.i] != '"' || !v.str() {
			return false
		}
		v.space()
		if v.i >= len(v.s) || v.s[v.i] != ':' {
			return false
		}
		v.i++
		v.space()
		if !v.value(depth) {
			return false
		}
		if done, ok := v.after('}'); done || !ok {
			return ok
		}
	}
}

func (v *jsonValidator) array(depth int) bool {
	if depth > maxJSONDepth {
		return false
	}
	v.i++ // [
	v.space()
	if v.i < len(v.s) && v.s[v.i] == ']' {
		v.i++
		return true
	}
	for {
		if !v.value(depth) {
			return false
		}
		if done, ok := v.after(']'); done || !ok {
			return ok
		}
	}
}

// after reads what follows a member of an object or an element of an array: a comma (another
// one follows: done false) or the closing byte (done true); anything else is invalid (ok false).
func (v *jsonValidator) after(closing byte) (done, ok bool) {
	v.space()
	if v.i >= len(v.s) {
		return false, false
	}
	switch v.s[v.i] {
	case ',':
		v.i++
		v.space()
		return false, true
	case closing:
		v.i++
		return true, true
	}
	return false, false
}

// str reads a string from its opening quote.
func (v *jsonValidator) str() bool {
	v.i++ // "
	for v.i < len(v.s) {
		// The bulk of a string, held as it is: eight bytes at a time up to the first word that
		// may hold a quote, a backslash or a control byte, then byte by byte. It was the model's
		// costliest loop (5 % of benchtool sim's CPU byte by byte).
		s, i := v.s, stringBody(v.s, v.i)
		for i < len(s) {
			if c := s[i]; c < 0x20 || c == '"' || c == '\\' {
				break
			}
			i++
		}
		v.i = i
		if v.i >= len(v.s) {
			return false
		}
		c := v.s[v.i]
		switch {
		case c == '"':
			v.i++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			v.i++
			if v.i >= len(v.s) {
				return false
			}
			switch v.s[v.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				v.i++
			case 'u':
				if len(v.s)-v.i < 5 {
					return false
				}
				for _, h := range []byte(v.s[v.i+1 : v.i+5]) {
					if !isHex(h) {
						return false
					}
				}
				v.i += 5
			default:
				return false
			}
		default:
			v.i++
		}
	}
	return false
}

const (
	lanes01 = 0x0101010101010101
	lanes80 = 0x8080808080808080
)

// stringBody returns the start of the first eight-byte word of s from i that may hold a byte
// below 0x20, a '"' or a '\\' (len(s) rounded down when none does). A lane's top bit is set
// in the test below for such a byte (a borrow only leaves a lane that matched: none is missed);
// bytes from 0x80 up are string content here, as encoding/json accepts them.
func stringBody(s string, i int) int {
	for ; i+8 <= len(s); i += 8 {
		x := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		q, b := x^'"'*lanes01, x^'\\'*lanes01
		if ((x-0x20*lanes01)&^x|(q-lanes01)&^q|(b-lanes01)&^b)&lanes80 != 0 {
			return i
		}
	}
	return i
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func (v *jsonValidator) digits() int {
	n := 0
	for v.i < len(v.s) && v.s[v.i] >= '0' && v.s[v.i] <= '9' {
		v.i++
		n++
	}
	return n
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func (v *jsonValidator) number() bool {
	if v.s[v.i] == '-' {
		v.i++
	}
	switch {
	case v.i >= len(v.s):
		return false
	case v.s[v.i] == '0':
		v.i++
	case v.s[v.i] >= '1' && v.s[v.i] <= '9':
		v.digits()
	default:
		return false
	}
	if v.i < len(v.s) && v.s[v.i] == '.' {
		v.i++
		if v.digits() == 0 {
			return false
		}
	}
	if v.i < len(v.s) && (v.s[v.i] == 'e' || v.s[v.i] == 'E') {
		v.i++
		if v.i < len(v.s) && (v.s[v.i] == '+' || v.s[v.i] == '-') {
			v.i++
		}
		if v.digits() == 0 {
			return false
		}
	}
	return true
}
