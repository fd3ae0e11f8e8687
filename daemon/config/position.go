package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// PosError is an error at a place in a JSON file, printed the way
// compilers and editors read it: PATH:LINE:COLUMN: message.
type PosError struct {
	Path      string
	Line, Col int // 1-based
	Err       error
}

func (e *PosError) Error() string {
	return fmt.Sprintf("%s:%d:%d: %v", e.Path, e.Line, e.Col, e.Err)
}

func (e *PosError) Unwrap() error { return e.Err }

// keyRe finds the key an error names: Parse's `key "report.interval": …`
// and `unknown key "foo"`, or encoding/json's `unknown field "foo"` within
// another message.
var keyRe = regexp.MustCompile(`(?:^|[ :])(?:key|field) "([^"]+)"`)

// Locate places err, an error Parse (or another strict JSON decoder that
// names keys the same way) returned for data, at its line and column in
// path: a syntax or type error where the decoder stopped, an error about
// a key where that key is (an error with a KeyPath() method names the
// whole path, e.g. assignment.KeyError), else the first byte.
func Locate(path string, data []byte, err error) *PosError {
	pe := &PosError{Path: path, Line: 1, Col: 1, Err: err}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		// Offset is what was read, the offending byte included; at the
		// end of the input, the place after the last byte.
		off := se.Offset - 1
		if strings.Contains(se.Error(), "unexpected end") {
			off = se.Offset
		}
		pe.Line, pe.Col = lineCol(data, off)
		return pe
	}
	key := ""
	var te *json.UnmarshalTypeError
	var kp interface{ KeyPath() string }
	switch {
	case errors.As(err, &kp):
		key = kp.KeyPath()
	case errors.As(err, &te):
		key = te.Field
	default:
		if m := keyRe.FindStringSubmatch(err.Error()); m != nil {
			key = m[1]
		}
	}
	if key != "" {
		if off, ok := keyOffset(data, key); ok {
			pe.Line, pe.Col = lineCol(data, off)
		}
	}
	return pe
}

// lineCol is the 1-based line and column (in bytes) of offset in data.
func lineCol(data []byte, offset int64) (int, int) {
	offset = min(max(offset, 0), int64(len(data)))
	before := data[:offset]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(offset) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

// keyOffset finds where a key path ("report.interval", "trust.public_keys.1")
// starts in data: its name's opening quote, or for an element of an array
// the element. A path of one name that is nowhere at the top level is
// looked for at any depth (encoding/json names an unknown nested key
// without its parents).
func keyOffset(data []byte, path string) (int64, bool) {
	offsets, anyDepth := map[string]int64{}, map[string]int64{}
	type frame struct {
		prefix  string
		array   bool
		index   int    // in an array: the next element's
		key     string // in an object: the key whose value comes next
		haveKey bool
	}
	var stack []*frame
	join := func(prefix, elem string) string {
		if prefix == "" {
			return elem
		}
		return prefix + "." + elem
	}
	// ended moves the innermost container past a value that ended.
	ended := func() {
		if len(stack) == 0 {
			return
		}
		if f := stack[len(stack)-1]; f.array {
			f.index++
		} else {
			f.haveKey = false
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		before := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil {
			break // io.EOF, or a syntax error Parse reports itself
		}
		// The token starts after the separators the decoder skipped.
		start := before + int64(leadingSpace(data[before:]))
		d, isDelim := tok.(json.Delim)
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && !top.array && !top.haveKey {
			if isDelim { // '}'
				stack = stack[:len(stack)-1]
				ended()
				continue
			}
			k, _ := tok.(string)
			top.key, top.haveKey = k, true
			offsets[join(top.prefix, k)] = start
			if _, seen := anyDepth[k]; !seen {
				anyDepth[k] = start
			}
			continue
		}
		if isDelim && d == ']' {
			stack = stack[:len(stack)-1]
			ended()
			continue
		}
		valuePath := ""
		if top != nil {
			if top.array {
				valuePath = join(top.prefix, strconv.Itoa(top.index))
				offsets[valuePath] = start
			} else {
				valuePath = join(top.prefix, top.key)
			}
		}
		if isDelim { // '{' or '['
			stack = append(stack, &frame{prefix: valuePath, array: d == '['})
			continue
		}
		ended()
	}
	if off, ok := offsets[path]; ok {
		return off, true
	}
	if !strings.Contains(path, ".") {
		off, ok := anyDepth[path]
		return off, ok
	}
	return 0, false
}

// leadingSpace counts the whitespace, commas and colons before a token.
func leadingSpace(b []byte) int {
	n := 0
	for n < len(b) {
		switch b[n] {
		case ' ', '\t', '\r', '\n', ',', ':':
			n++
		default:
			return n
		}
	}
	return n
}
