package capabilities

import (
	"strings"
	"testing"
)

func TestParsePolicy(t *testing.T) {
	s, err := ParsePolicy([]byte(DefaultPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.String(); got != "cap_dac_read_search,cap_net_bind_service,cap_net_admin,cap_net_raw,cap_perfmon,cap_bpf" {
		t.Errorf("default policy: %s", got)
	}
	for _, root := range []string{"cap_sys_admin", "cap_sys_module", "cap_dac_override", "cap_setuid", "cap_setgid", "cap_chown", "cap_fowner", "cap_sys_ptrace", "cap_setfcap", "cap_sys_rawio"} {
		c, _ := Parse(root)
		if s.Has(c) {
			t.Errorf("the default policy allows %s", c)
		}
	}
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"", ""},
		{"# nothing\n\n   \n", ""},
		{"net_raw", "cap_net_raw"},
		{"CAP_NET_RAW\r\ncap_bpf\r\n", "cap_net_raw,cap_bpf"},
		{"  cap_bpf   # for the probes\n#cap_sys_admin\ncap_bpf\n", "cap_bpf"},
		{"cap_net_raw#no space", "cap_net_raw"},
	} {
		s, err := ParsePolicy([]byte(tc.in))
		if err != nil || s.String() != tc.want {
			t.Errorf("ParsePolicy(%q) = %q, %v; want %q", tc.in, s, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"cap_net_raw\n\ncap_flying\n", `policy line 3: unknown capability "cap_flying"`},
		{"cap_net_raw cap_bpf", "policy line 1"},
		{"cap_net_raw,cap_bpf", "policy line 1"},
		{strings.Repeat("x", 70<<10), "policy:"},
	} {
		if s, err := ParsePolicy([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePolicy(%.40q) = %s, %v; want an error naming %q", tc.in, s, err, tc.want)
		}
	}
}
