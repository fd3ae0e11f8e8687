// Package logging makes addond's slog handler: native journald entries
// when its stderr is connected to the journal, text on stderr otherwise.
//
// In the journal every entry has its real priority (slog's Debug, Info,
// Warn and Error are 7, 6, 4 and 3), its attributes as fields with
// upper-case names (addon_id → ADDON_ID), and every entry about an add-on
// — one with an addon_id attribute — carries ADDON_ID, ADDON_VERSION and,
// where the add-on has one, UNIT, so that
//
//	journalctl -u addond -p err
//	journalctl ADDON_ID=pingsweep
//
// show the errors and one add-on's story.
package logging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	slogjournal "github.com/systemd/slog-journal"
	"golang.org/x/sys/unix"
)

// Attribute keys that name an add-on, its version and its unit.
const (
	KeyAddon        = "addon_id"
	KeyVersion      = "version"
	KeyUnit         = "unit"
	keyAddonVersion = "addon_version"
)

// Addon is what an entry about an add-on is told when its own attributes
// do not say: the version that is active and the unit it runs as.
type Addon struct {
	Version string
	Unit    string // "" when it runs as none (an in-agent feature)
}

// Addons is the add-ons' current versions and units, shared between the
// loop that knows them and every goroutine that logs. The zero value is
// empty and ready.
type Addons struct {
	m atomic.Pointer[map[string]Addon]
}

// Set replaces what is known.
func (a *Addons) Set(m map[string]Addon) { a.m.Store(&m) }

func (a *Addons) get(id string) Addon {
	if a == nil {
		return Addon{}
	}
	if m := a.m.Load(); m != nil {
		return (*m)[id]
	}
	return Addon{}
}

// UnderJournal reports whether stderr is the journal's stream for this
// process, as systemd.exec(5) says to tell: $JOURNAL_STREAM names the
// device and inode of the stream, and stderr is that same file.
func UnderJournal() bool {
	v := os.Getenv("JOURNAL_STREAM")
	if v == "" {
		return false
	}
	var dev, ino uint64
	if _, err := fmt.Sscanf(v, "%d:%d", &dev, &ino); err != nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(2, &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// New returns the handler addond logs through: native journald when
// stderr is the journal (and the journal's socket takes the entries),
// text on w otherwise. addons may be nil.
func New(w io.Writer, level slog.Leveler, addons *Addons) slog.Handler {
	if UnderJournal() {
		if h, err := Journal(level, addons); err == nil {
			return h
		}
	}
	return slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
}

// Journal returns a handler that writes native journal entries.
func Journal(level slog.Leveler, addons *Addons) (slog.Handler, error) {
	h, err := slogjournal.NewHandler(&slogjournal.Options{Level: level, ReplaceAttr: journalKey, ReplaceGroup: fieldName})
	if err != nil {
		return nil, err
	}
	return newAddonHandler(h, addons), nil
}

// newAddonHandler wraps next (the journal's) with the add-on fields and
// the logfmt MESSAGE.
func newAddonHandler(next slog.Handler, addons *Addons) *addonHandler {
	buf := &lockedBuffer{}
	text := slog.NewTextHandler(&buf.b, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
			return slog.Attr{}
		}
		return a
	}})
	return &addonHandler{next: next, addons: addons, text: text, textBuf: buf}
}

// lockedBuffer is the text handler's output, one entry at a time.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// journalKey makes an attribute's key a journal field name; one that
// would take the place of a field the handler writes itself (MESSAGE,
// PRIORITY, CODE_*, SYSLOG_*) is written as ATTR_<name>.
func journalKey(_ []string, a slog.Attr) slog.Attr {
	a.Key = fieldName(a.Key)
	switch {
	case a.Key == "MESSAGE", a.Key == "PRIORITY", strings.HasPrefix(a.Key, "CODE_"), strings.HasPrefix(a.Key, "SYSLOG_"):
		a.Key = "ATTR_" + a.Key
	}
	return a
}

// fieldName maps a key to what journald accepts as a field name: upper
// case letters, digits and '_', not starting with a digit or '_' (those
// are trusted fields only journald sets), at most 64 bytes.
func fieldName(k string) string {
	b := make([]byte, 0, len(k))
	for i := 0; i < len(k) && len(b) < 64; i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z':
			b = append(b, c-'a'+'A')
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9' && len(b) > 0:
			b = append(b, c)
		case len(b) > 0 && b[len(b)-1] != '_':
			b = append(b, '_')
		}
	}
	if len(b) == 0 {
		return "ATTR"
	}
	return strings.TrimRight(string(b), "_")
}

// addonHandler adds ADDON_VERSION and UNIT to every entry about an
// add-on: from its own version and unit attributes where it has them,
// else from what Addons knows.
type addonHandler struct {
	next   slog.Handler
	addons *Addons
	// text renders an entry's attributes as logfmt for its MESSAGE (what
	// `journalctl` shows and `--grep` searches); textBuf is its output.
	text    slog.Handler
	textBuf *lockedBuffer
	// What WithAttrs was given, of the keys that matter here.
	id, version, unit string
	// grouped: the record's attributes are in a group (WithGroup), not
	// the entry's own.
	grouped bool
	// hasAttrs: WithAttrs gave attributes (the text handler holds them).
	hasAttrs bool
}

func (h *addonHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *addonHandler) Handle(ctx context.Context, r slog.Record) error {
	id, version, unit := h.id, h.version, h.unit
	if !h.grouped {
		r.Attrs(func(a slog.Attr) bool { note(a, &id, &version, &unit); return true })
	}
	// MESSAGE keeps the attributes in text too: the journal's default
	// view, and `journalctl --grep`, show only MESSAGE.
	if r.NumAttrs() > 0 || h.hasAttrs {
		r.Message += h.logfmt(ctx, r)
	}
	if id == "" {
		return h.next.Handle(ctx, r)
	}
	known := h.addons.get(id)
	if version == "" {
		version = known.Version
	}
	r = r.Clone()
	if version != "" {
		r.AddAttrs(slog.String(keyAddonVersion, version))
	}
	if unit == "" && known.Unit != "" {
		r.AddAttrs(slog.String(KeyUnit, known.Unit))
	}
	return h.next.Handle(ctx, r)
}

// logfmt is r's attributes (and those of WithAttrs) as " key=value…",
// the text handler's rendering without time, level and message.
func (h *addonHandler) logfmt(ctx context.Context, r slog.Record) string {
	h.textBuf.mu.Lock()
	defer h.textBuf.mu.Unlock()
	h.textBuf.b.Reset()
	if h.text.Handle(ctx, r) != nil {
		return ""
	}
	if t := strings.TrimSpace(h.textBuf.b.String()); t != "" {
		return " " + t
	}
	return ""
}

// note takes an attribute that names the add-on, its version or its unit.
func note(a slog.Attr, id, version, unit *string) {
	switch a.Key {
	case KeyAddon:
		*id = a.Value.String()
	case KeyVersion:
		*version = a.Value.String()
	case KeyUnit:
		*unit = a.Value.String()
	}
}

func (h *addonHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	h2 := *h
	if !h.grouped {
		for _, a := range attrs {
			note(a, &h2.id, &h2.version, &h2.unit)
		}
	}
	h2.next = h.next.WithAttrs(attrs)
	if len(attrs) > 0 {
		h2.text, h2.hasAttrs = h.text.WithAttrs(attrs), true
	}
	return &h2
}

func (h *addonHandler) WithGroup(name string) slog.Handler {
	// Attributes in a group are the group's, not the entry's: an addon_id
	// in it does not make the entry one about an add-on.
	if name == "" {
		return h
	}
	h2 := *h
	h2.next, h2.grouped, h2.text = h.next.WithGroup(name), true, h.text.WithGroup(name)
	return &h2
}
