package logging

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"
)

func TestFieldName(t *testing.T) {
	for in, want := range map[string]string{
		"addon_id":              "ADDON_ID",
		"unit":                  "UNIT",
		"error":                 "ERROR",
		"active-version":        "ACTIVE_VERSION",
		"_SYSTEMD_UNIT":         "SYSTEMD_UNIT", // trusted fields are journald's alone
		"9lives":                "LIVES",
		"a.b":                   "A_B",
		"x_":                    "X",
		"":                      "ATTR",
		"__":                    "ATTR",
		"ünïcode":               "N_CODE",
		strings.Repeat("a", 80): strings.Repeat("A", 64),
	} {
		if got := fieldName(in); got != want {
			t.Errorf("fieldName(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"message": "ATTR_MESSAGE", "priority": "ATTR_PRIORITY", "code_file": "ATTR_CODE_FILE", "syslog_identifier": "ATTR_SYSLOG_IDENTIFIER"} {
		if got := journalKey(nil, slog.String(in, "x")).Key; got != want {
			t.Errorf("journalKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzFieldName(f *testing.F) {
	f.Add("addon_id")
	f.Add("_x9")
	f.Fuzz(func(t *testing.T, k string) {
		n := fieldName(k)
		if n == "" || len(n) > 64 || n[0] == '_' || (n[0] >= '0' && n[0] <= '9') {
			t.Fatalf("fieldName(%q) = %q", k, n)
		}
		for _, c := range []byte(n) {
			if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				t.Fatalf("fieldName(%q) = %q", k, n)
			}
		}
	})
}

// record is what a handler was handed: message and attributes, flat.
type record struct {
	msg   string
	attrs map[string]string
}

type capture struct {
	recs  *[]record
	attrs []slog.Attr
}

func (c capture) Enabled(context.Context, slog.Level) bool { return true }
func (c capture) Handle(_ context.Context, r slog.Record) error {
	rec := record{msg: r.Message, attrs: map[string]string{}}
	for _, a := range c.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { rec.attrs[a.Key] = a.Value.String(); return true })
	*c.recs = append(*c.recs, rec)
	return nil
}
func (c capture) WithAttrs(as []slog.Attr) slog.Handler {
	c.attrs = append(append([]slog.Attr(nil), c.attrs...), as...)
	return c
}
func (c capture) WithGroup(string) slog.Handler { return c }

// TestAddonFields: every entry about an add-on gets its version and unit,
// from its own attributes first, else from what Addons knows; others get
// nothing.
func TestAddonFields(t *testing.T) {
	var recs []record
	addons := &Addons{}
	addons.Set(map[string]Addon{
		"hello": {Version: "1.0.0", Unit: "addond-hello.service"},
		"flag":  {Version: "2.0.0"},
	})
	log := slog.New(newAddonHandler(capture{recs: &recs}, addons))
	log.Info("config reloaded")
	log.Info("promoted", "addon_id", "hello")
	log.Warn("rolling back", "addon_id", "hello", "version", "1.1.0")
	log.Info("helper run started", "addon_id", "hello", "unit", "addond-hello.run-1.service")
	log.With("addon_id", "flag").Info("feature on")
	log.Info("removing add-on", "addon_id", "gone")
	log.WithGroup("g").Info("grouped", "addon_id", "hello")

	want := []map[string]string{
		{},
		{"addon_id": "hello", "addon_version": "1.0.0", "unit": "addond-hello.service"},
		{"addon_id": "hello", "version": "1.1.0", "addon_version": "1.1.0", "unit": "addond-hello.service"},
		{"addon_id": "hello", "addon_version": "1.0.0", "unit": "addond-hello.run-1.service"},
		{"addon_id": "flag", "addon_version": "2.0.0"},
		{"addon_id": "gone"},
		{"addon_id": "hello"},
	}
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d", len(recs), len(want))
	}
	for i, w := range want {
		if fmt.Sprint(recs[i].attrs) != fmt.Sprint(w) {
			t.Errorf("%q: attributes %v, want %v", recs[i].msg, recs[i].attrs, w)
		}
	}
	// MESSAGE carries the attributes as text (the journal's default view
	// and --grep see only it), the ones it was given, not those added.
	for i, msg := range []string{
		"config reloaded",
		"promoted addon_id=hello",
		"rolling back addon_id=hello version=1.1.0",
		"helper run started addon_id=hello unit=addond-hello.run-1.service",
		"feature on addon_id=flag",
		"removing add-on addon_id=gone",
		"grouped g.addon_id=hello",
	} {
		if recs[i].msg != msg {
			t.Errorf("MESSAGE %q, want %q", recs[i].msg, msg)
		}
	}
	var nilAddons *Addons
	if a := nilAddons.get("x"); a != (Addon{}) {
		t.Errorf("nil Addons: %+v", a)
	}
}

// TestUnderJournal: only a $JOURNAL_STREAM that names stderr's own device
// and inode counts; a stale one (stderr redirected since) does not.
func TestUnderJournal(t *testing.T) {
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]bool{
		"":                                     false,
		"garbage":                              false,
		fmt.Sprintf("%d:%d", st.Dev, st.Ino):   true,
		fmt.Sprintf("%d:%d", st.Dev, st.Ino+1): false,
	} {
		t.Setenv("JOURNAL_STREAM", v)
		if got := UnderJournal(); got != want {
			t.Errorf("JOURNAL_STREAM=%q: UnderJournal() = %v, want %v", v, got, want)
		}
	}
	// Not under the journal: text on the writer given.
	t.Setenv("JOURNAL_STREAM", "")
	var buf bytes.Buffer
	slog.New(New(&buf, slog.LevelInfo, nil)).Warn("hi", "addon_id", "x")
	if !strings.Contains(buf.String(), "level=WARN msg=hi addon_id=x") {
		t.Errorf("text handler wrote %q", buf.String())
	}
}
