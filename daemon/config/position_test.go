package config

import (
	"errors"
	"strings"
	"testing"
)

// TestLocate: every kind of error Parse returns is placed where an editor
// should jump: the key it names (nested, in an array, or unknown), or
// where the JSON broke.
func TestLocate(t *testing.T) {
	for _, c := range []struct {
		name, doc, want string
	}{
		{"syntax", "{\n  \"agent_id\": \"a\",\n  \"probation\" \"1s\"\n}", "c.json:3:15: invalid JSON"},
		{"truncated", "{\"agent_id\": \"a\",\n \"x\": [1,\n 2", "c.json:3:3: invalid JSON"},
		{"unknown key", "{\n  \"agent_id\": \"a\",\n    \"bogus\": 1\n}", `c.json:3:5: unknown key "bogus"`},
		{"nested unknown key", "{\"agent_id\": \"a\",\n\"trust\": {\n  \"public_key\": []}}", `c.json:3:3: unknown key "public_key"`},
		{"bad duration", "{\n\"agent_id\": \"a\", \"poll_interval\": \"5x\"}", `c.json:2:18: key "poll_interval"`},
		{"nested type", "{\"agent_id\": \"a\",\n \"report\": {\"interval\": 3}}", `c.json:2:13: key "report.interval"`},
		{"type", "{\"agent_id\": \"a\",\n\n\t\"max_concurrent_downloads\": \"two\"}", `c.json:3:2: key "max_concurrent_downloads"`},
		{"validation", "{\n \"agent_id\": \"../x\"\n}", `c.json:2:2: key "agent_id"`},
		{"relative root", "{\"agent_id\": \"a\",\n  \"runtime_root\": \"var/lib\"}", `c.json:2:3: key "runtime_root"`},
		{"not an object", "[1, 2]", "c.json:1:1: invalid JSON"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			if err == nil {
				t.Fatal("Parse took it")
			}
			pe := Locate("c.json", []byte(c.doc), err)
			if got := pe.Error(); !strings.HasPrefix(got, c.want) {
				t.Errorf("got  %s\nwant %s…", got, c.want)
			}
			if !errors.Is(pe, err) {
				t.Errorf("%v does not wrap %v", pe, err)
			}
		})
	}
}

func TestKeyOffset(t *testing.T) {
	doc := `{"a": {"b": [10, {"c": 1}, [2, 3]], "": 4}, "d": true, "c": null}`
	for path, want := range map[string]int{
		"a": 1, "a.b": 7, "a.b.0": 13, "a.b.1": 17, "a.b.1.c": 18, "a.b.2": 27, "a.b.2.1": 31,
		"a.": 36, "d": 44, "c": 55,
	} {
		off, ok := keyOffset([]byte(doc), path)
		if !ok || int(off) != want {
			t.Errorf("keyOffset(%q) = %d, %v; want %d (%q)", path, off, ok, want, doc[min(int(off), len(doc)-1):])
		}
	}
	if _, ok := keyOffset([]byte(doc), "a.x"); ok {
		t.Error("found a.x")
	}
}

// FuzzLocate: any document and any error naming any key is placed within
// the document, on a line and column that exist.
func FuzzLocate(f *testing.F) {
	f.Add([]byte("{\n \"agent_id\": \"../x\"\n}"), "agent_id")
	f.Add([]byte(`{"a": [{"b": [1, {"c": 2}]}]}`), "a.0.b.1.c")
	f.Add([]byte(`{"a": `), "a")
	f.Fuzz(func(t *testing.T, doc []byte, key string) {
		for _, err := range []error{errors.New(`key "` + key + `": bad`), errors.New(`unknown key "` + key + `"`)} {
			pe := Locate("f", doc, err)
			lines := strings.Split(string(doc), "\n")
			if pe.Line < 1 || pe.Line > len(lines) || pe.Col < 1 || pe.Col > len(lines[pe.Line-1])+1 {
				t.Fatalf("%v: line %d col %d outside the document (%d lines)", err, pe.Line, pe.Col, len(lines))
			}
		}
		if _, err := Parse(doc); err != nil {
			pe := Locate("f", doc, err)
			if pe.Line < 1 || pe.Col < 1 {
				t.Fatalf("%v", pe)
			}
		}
	})
}
