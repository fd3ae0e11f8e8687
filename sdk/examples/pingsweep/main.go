// Command pingsweep is the example sidecar that needs a Linux capability:
// it opens a raw ICMP socket, which proves that cap_net_raw reached it,
// and sweeps its targets with ICMP echo requests.
//
//	{"targets": ["127.0.0.1"], "interval": "10s"}
//
// Health is UNHEALTHY, with the reason, when the raw socket cannot be
// opened; DEGRADED when a target did not answer the last sweep.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/addond/addond/sdk"
)

var version = "1.0.0"

type config struct {
	Targets  []string `json:"targets"`
	Interval string   `json:"interval"`
}

type pingsweep struct {
	mu       sync.Mutex
	health   sdk.Health
	cancel   context.CancelFunc
	socketFD int
}

func (p *pingsweep) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{ID: "pingsweep", Version: version, Capabilities: []string{"icmp:sweep"}}, nil
}

func (p *pingsweep) Configure(_ context.Context, raw []byte) error {
	c := config{Targets: []string{"127.0.0.1"}, Interval: "10s"}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &c); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	interval, err := time.ParseDuration(c.Interval)
	if err != nil || interval < 100*time.Millisecond {
		return fmt.Errorf("config: interval %q, want a duration of at least 100ms", c.Interval)
	}
	var targets []net.IP
	for _, t := range c.Targets {
		ip := net.ParseIP(t).To4()
		if ip == nil {
			return fmt.Errorf("config: target %q is not an IPv4 address", t)
		}
		targets = append(targets, ip)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancel != nil {
		p.cancel()
	}
	if p.socketFD <= 0 {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_ICMP)
		if err != nil {
			p.health = sdk.Health{Status: sdk.Unhealthy, Reason: fmt.Sprintf("cannot open a raw ICMP socket (is cap_net_raw granted?): %v", err)}
			return nil
		}
		syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &syscall.Timeval{Sec: 1})
		p.socketFD = fd
	}
	p.health = sdk.Health{Status: sdk.Healthy}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.sweepLoop(ctx, p.socketFD, targets, interval)
	return nil
}

func (p *pingsweep) sweepLoop(ctx context.Context, fd int, targets []net.IP, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := uint16(1); ; seq++ {
		var down []string
		for _, ip := range targets {
			if !echo(fd, ip, seq) {
				down = append(down, ip.String())
			}
		}
		p.mu.Lock()
		if len(down) > 0 {
			p.health = sdk.Health{Status: sdk.Degraded, Reason: "no echo reply from " + strings.Join(down, ", ")}
		} else {
			p.health = sdk.Health{Status: sdk.Healthy}
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// echo sends one ICMP echo request to ip and waits up to a second for the
// reply.
func echo(fd int, ip net.IP, seq uint16) bool {
	id := uint16(os.Getpid())
	msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'a', 'd', 'd', 'o', 'n', 'd'}
	binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	var to syscall.SockaddrInet4
	copy(to.Addr[:], ip)
	if err := syscall.Sendto(fd, msg, 0, &to); err != nil {
		return false
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		n, from, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return false
		}
		sa, ok := from.(*syscall.SockaddrInet4)
		if !ok || !net.IP(sa.Addr[:]).Equal(ip) || n < 20 {
			continue
		}
		hl := int(buf[0]&0x0f) * 4
		if n < hl+8 {
			continue
		}
		icmp := buf[hl:n]
		if icmp[0] == 0 && binary.BigEndian.Uint16(icmp[4:]) == id && binary.BigEndian.Uint16(icmp[6:]) == seq {
			return true
		}
	}
	return false
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func (p *pingsweep) Health(context.Context) (sdk.Health, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.health, nil
}

func main() {
	sdk.Serve(&pingsweep{health: sdk.Health{Status: sdk.Unknown, Reason: "not configured yet"}})
}
