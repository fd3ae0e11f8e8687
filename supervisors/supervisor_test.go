package supervisors

import "testing"

func TestNeedsRestart(t *testing.T) {
	base := Spec{AddonID: "a", Version: "1", Binary: "/b", Args: []string{"-x"}, ConfigJSON: []byte(`{}`), Resources: &Resources{TasksMax: 8}}
	cases := []struct {
		name            string
		mut             func(*Spec)
		restart, config bool
	}{
		{"same", func(*Spec) {}, false, false},
		{"config only", func(s *Spec) { s.ConfigJSON = []byte(`{"a":1}`) }, false, true},
		{"version", func(s *Spec) { s.Version = "2" }, true, false},
		{"binary", func(s *Spec) { s.Binary = "/c" }, true, false},
		{"feature", func(s *Spec) { s.Feature = "heartbeat" }, true, false},
		{"args", func(s *Spec) { s.Args = []string{"-y"} }, true, false},
		{"args order", func(s *Spec) { s.Args = []string{"-x", "-y"} }, true, false},
		{"resources", func(s *Spec) { s.Resources = &Resources{TasksMax: 9} }, true, false},
		{"resources removed", func(s *Spec) { s.Resources = nil }, true, false},
		{"schedule", func(s *Spec) { s.Schedule = "*:0/5" }, true, false},
	}
	for _, tc := range cases {
		s := base
		s.Args = append([]string(nil), base.Args...)
		tc.mut(&s)
		if got := s.NeedsRestart(base); got != tc.restart {
			t.Errorf("%s: NeedsRestart = %v, want %v", tc.name, got, tc.restart)
		}
		if got := s.ConfigChanged(base); got != tc.config {
			t.Errorf("%s: ConfigChanged = %v, want %v", tc.name, got, tc.config)
		}
	}
}
