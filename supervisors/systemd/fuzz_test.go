package systemd

import (
	"math"
	"strings"
	"testing"

	"github.com/addond/addond/supervisors"
)

// FuzzParseName: unit names come from the manager's unit list, where an
// add-on (it shares addond's uid, so its manager) can create any name.
// A name parses to an add-on id only when it is exactly one of the names
// addond makes for that id.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{
		"addond-hello.service", "addond-hello.timer", "addond-probe.run-0011aa.service",
		"addond-hello.socket", "addond-../x.service", "addond-.service", "addond-Hello.service",
		"addond-hello.run-.service", "addond-hello.run-x.timer", "addond-hello.service.d",
		"addond-hello", "other.service", "addond-a.b.service", "addond-hello.run-a.b.service",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, unit string) {
		id, run, ok := ParseName(unit)
		if !ok {
			if id != "" || run {
				t.Fatalf("ParseName(%q) refused with %q, %v", unit, id, run)
			}
			return
		}
		if ValidID(id) != nil || strings.ContainsAny(id, "./\\") {
			t.Fatalf("ParseName(%q) = invalid id %q", unit, id)
		}
		switch {
		case run:
			unique, found := strings.CutSuffix(strings.TrimPrefix(unit, UnitPrefix+id+".run-"), ".service")
			if !found || RunName(id, unique) != unit {
				t.Fatalf("ParseName(%q) = run of %q, which is not RunName's", unit, id)
			}
		case unit != ServiceName(id) && unit != TimerName(id):
			t.Fatalf("ParseName(%q) = %q, whose units are %s and %s", unit, id, ServiceName(id), TimerName(id))
		}
		// And back: what addond names for id parses as id.
		for _, name := range []string{ServiceName(id), TimerName(id)} {
			if got, r, ok := ParseName(name); !ok || r || got != id {
				t.Fatalf("ParseName(%q) = %q, %v, %v", name, got, r, ok)
			}
		}
	})
}

// FuzzDescriptionFingerprint: adoption reads the fingerprint back from a
// unit's description (read from the manager). The description addond
// writes yields exactly its fingerprint, whatever the id and version
// hold; any other text yields what its last "[...]" holds, or nothing.
func FuzzDescriptionFingerprint(f *testing.F) {
	f.Add("hello", "1.0.0", "0123456789abcdef", "addond add-on hello 1.0.0 [0123456789abcdef]")
	f.Add("x", "v[1]", "fp", "]")
	f.Add("", "", "", "[")
	f.Add("a]b", "[c", "d", "][")
	f.Fuzz(func(t *testing.T, id, version, fp, desc string) {
		got := DescriptionFingerprint(desc)
		if got != "" && (!strings.Contains(desc, "["+got+"]") || strings.Contains(got, "[")) {
			t.Fatalf("DescriptionFingerprint(%q) = %q", desc, got)
		}
		if strings.ContainsAny(fp, "[]") {
			return // addond's fingerprints are hex
		}
		d := Description(supervisors.Spec{AddonID: id, Version: version}, fp)
		if got := DescriptionFingerprint(d); got != fp {
			t.Fatalf("DescriptionFingerprint(%q) = %q, want %q", d, got, fp)
		}
	})
}

// FuzzCheckResources: the resources of an assignment become unit
// properties. What CheckResources accepts maps to properties systemd
// takes (in range, no overflow: CPU quota 1%..100 per CPU of 1024,
// memory at least 1 MiB, high not above max, 1..4194304 tasks), and only
// the limits that are set.
func FuzzCheckResources(f *testing.F) {
	f.Add(50, int64(64<<20), int64(0), int64(64))
	f.Add(0, int64(0), int64(0), int64(0))
	f.Add(102400, int64(1<<20), int64(1<<20), int64(1<<22))
	f.Add(102401, int64(1<<20-1), int64(0), int64(1<<22+1))
	f.Add(-1, int64(-1), int64(-1), int64(-1))
	f.Add(math.MaxInt, int64(math.MaxInt64), int64(math.MaxInt64), int64(math.MaxInt64))
	f.Add(100, int64(1<<30), int64(2<<30), int64(1))
	f.Fuzz(func(t *testing.T, cpu int, mem, high, tasks int64) {
		r := &supervisors.Resources{CPUMaxPercent: cpu, MemoryMaxBytes: mem, MemoryHighBytes: high, TasksMax: tasks}
		if err := CheckResources("hello", r); err != nil {
			if !strings.Contains(err.Error(), `"hello"`) {
				t.Fatalf("error %q does not name the add-on", err)
			}
			return
		}
		want := map[string]uint64{}
		if cpu > 0 {
			want["CPUQuotaPerSecUSec"] = uint64(cpu) * 10000
		}
		if mem > 0 {
			want["MemoryMax"] = uint64(mem)
		}
		if high > 0 {
			want["MemoryHigh"] = uint64(high)
		}
		if tasks > 0 {
			want["TasksMax"] = uint64(tasks)
		}
		props := ResourceProperties(r)
		if len(props) != len(want) {
			t.Fatalf("%+v: %d properties, want %d", *r, len(props), len(want))
		}
		for _, p := range props {
			v, ok := p.Value.Value().(uint64)
			if !ok || v != want[p.Name] || v == 0 {
				t.Fatalf("%+v: %s = %v, want %d", *r, p.Name, p.Value, want[p.Name])
			}
			switch p.Name {
			case "CPUQuotaPerSecUSec":
				if v > 1024*1000000 {
					t.Fatalf("CPU quota %d µs/s", v)
				}
			case "MemoryMax", "MemoryHigh":
				if v < 1<<20 || v > math.MaxInt64 {
					t.Fatalf("%s %d", p.Name, v)
				}
			case "TasksMax":
				if v > 1<<22 {
					t.Fatalf("TasksMax %d", v)
				}
			}
		}
		if mem > 0 && high > mem {
			t.Fatalf("accepted memory_high %d above memory_max %d", high, mem)
		}
	})
}
