package capabilities

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// DefaultPolicyPath is the allow-list the packages ship.
const DefaultPolicyPath = "/etc/addond/capabilities.allow"

// DefaultPolicy is the shipped allow-list: what network and observability
// add-ons need, nothing that amounts to root.
const DefaultPolicy = `# Capabilities addond-updater may put on an add-on's binary, one per line.
# A capability is granted only when the add-on's signed package asks for it
# AND it is listed here.
cap_net_raw
cap_net_admin
cap_net_bind_service
cap_bpf
cap_perfmon
cap_dac_read_search
`

// ParsePolicy reads an allow-list: one capability per line, "#" starts a
// comment, blank lines are ignored; an unknown name is an error naming its
// line.
func ParsePolicy(data []byte) (Set, error) {
	var s Set
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		c, err := Parse(text)
		if err != nil {
			return 0, &LineError{Line: line, Err: err}
		}
		s = s.Add(c)
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("policy: %w", err)
	}
	return s, nil
}

// LineError is an error on one line of a policy file.
type LineError struct {
	Line int // 1-based
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("policy line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }
