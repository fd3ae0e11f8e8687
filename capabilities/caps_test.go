package capabilities

import (
	"os/exec"
	"strings"
	"testing"
)

// The names are libcap's, bit for bit.
func TestNamesMatchLibcap(t *testing.T) {
	needLibcap(t)
	out, err := exec.Command("capsh", "--decode=0x"+strings.Repeat("f", 16)).Output()
	if err != nil {
		t.Fatal(err)
	}
	_, list, ok := strings.Cut(strings.TrimSpace(string(out)), "=")
	if !ok {
		t.Fatalf("capsh --decode: %q", out)
	}
	libcap := strings.Split(list, ",")
	for c := Cap(0); c <= Last; c++ {
		if int(c) >= len(libcap) {
			t.Logf("libcap does not know %s (bit %d)", c, c)
			continue
		}
		if c.String() != libcap[c] {
			t.Errorf("bit %d: %q, libcap says %q", c, c, libcap[c])
		}
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Cap
	}{
		{"cap_net_raw", 13}, {"CAP_NET_RAW", 13}, {"net_raw", 13}, {"NET_RAW", 13}, {"Cap_Net_Raw", 13},
		{" cap_net_raw\t", 13}, {"cap_chown", 0}, {"chown", 0}, {"cap_bpf", 39}, {"cap_perfmon", 38},
		{"cap_checkpoint_restore", 40}, {"cap_dac_read_search", 2}, {"CAP_SYS_ADMIN", 21},
	} {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "cap_", "cap", "net-raw", "cap_net_raw,cap_bpf", "cap_cap_net_raw", "cap_41", "41", "13", "cap_flying", "all", "net_raw\x00", "capnet_raw", "cap net_raw"} {
		if c, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %s, want an error", bad, c)
		} else if !strings.Contains(err.Error(), "unknown capability") {
			t.Errorf("Parse(%q): %v", bad, err)
		}
	}
	for c := Cap(0); c <= Last; c++ {
		if got, err := Parse(c.String()); err != nil || got != c {
			t.Errorf("Parse(%q) = %d, %v", c, got, err)
		}
		if got, err := Parse(strings.ToUpper(strings.TrimPrefix(c.String(), "cap_"))); err != nil || got != c {
			t.Errorf("Parse(upper %q) = %d, %v", c, got, err)
		}
	}
	if Last != 40 {
		t.Errorf("Last = %d, want 40 (cap_checkpoint_restore)", Last)
	}
	if s := Cap(41).String(); s != "cap_41" {
		t.Errorf("Cap(41) = %q", s)
	}
}

func TestSet(t *testing.T) {
	s, err := ParseSet([]string{"net_raw", "CAP_BPF", "cap_net_admin", "cap_net_raw"})
	if err != nil {
		t.Fatal(err)
	}
	if s.String() != "cap_net_admin,cap_net_raw,cap_bpf" {
		t.Errorf("String = %q", s)
	}
	if !s.Has(12) || !s.Has(13) || !s.Has(39) || s.Has(0) || s.Has(38) || s.Has(64) || s.Has(1000) {
		t.Errorf("Has is wrong for %s", s)
	}
	if got := s.Caps(); len(got) != 3 || got[0] != 12 || got[1] != 13 || got[2] != 39 {
		t.Errorf("Caps = %v", got)
	}
	if Set(0).String() != "" || Set(0).Names() != nil || Set(0).Caps() != nil {
		t.Error("the empty set is not empty")
	}
	if Set(1<<63).String() != "cap_63" {
		t.Errorf("bit 63: %q", Set(1<<63).String())
	}
	if s, err := ParseSet(nil); err != nil || s != 0 {
		t.Errorf("ParseSet(nil) = %s, %v", s, err)
	}
	if _, err := ParseSet([]string{"cap_net_raw", "cap_flying", "cap_bpf"}); err == nil || !strings.Contains(err.Error(), `"cap_flying"`) {
		t.Errorf("ParseSet with an unknown name: %v", err)
	}
}
