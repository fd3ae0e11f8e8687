// Package source fetches the assignment document — from an object in the
// store or from a local file — only when it changed (ETag / If-None-Match
// for the store, file identity for a file), and accepts it only after the
// checks DESIGN.md requires: a valid signature where one is required or
// present, this agent's agent_id, and a serial no lower than the last
// applied one.
package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"syscall"
	"time"

	"github.com/addond/addond/daemon/assignment"
	"github.com/addond/addond/daemon/signing"
	"github.com/addond/addond/daemon/store"
)

// ErrUnchanged: the document is the one accepted last time.
var ErrUnchanged = errors.New("assignment document unchanged")

// Fetched is a document as read, not yet accepted.
type Fetched struct {
	Raw    []byte
	Sig    []byte // raw .sig file contents; nil when there is none
	Token  string // ETag or file identity, for the next conditional fetch
	Origin string // where it came from, for messages
	Remote bool   // from the store (signature required when configured)
}

// Source yields the assignment document.
type Source interface {
	// Fetch returns the document unless its token equals since, in which
	// case it returns ErrUnchanged without transferring the body.
	Fetch(ctx context.Context, since string) (*Fetched, error)
}

// Store reads agents/<agent>/assignments.json (+ .sig) from a store.
type Store struct {
	Store store.Store
	Key   string
}

// FetchTimeout bounds one fetch of the document and its signature: a
// store that stops answering never holds up the polls after it.
const FetchTimeout = 2 * time.Minute

func (s *Store) Fetch(ctx context.Context, since string) (*Fetched, error) {
	ctx, cancel := context.WithTimeout(ctx, FetchTimeout)
	defer cancel()
	raw, info, err := store.ReadSmall(ctx, s.Store, s.Key, assignment.MaxDocumentSize, store.OpenOptions{IfNoneMatch: since})
	if errors.Is(err, store.ErrNotModified) {
		return nil, ErrUnchanged
	}
	if err != nil {
		return nil, fmt.Errorf("assignments %s: %w", s.Key, err)
	}
	// The signature in the object's metadata, written atomically with
	// its bytes, where there is one: no request for the .sig, and never
	// another document's. It is what decides, verified like a .sig file.
	sig, _, err := store.Signature(ctx, s.Store, s.Key, info)
	if errors.Is(err, store.ErrNotFound) {
		sig, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("assignments %s.sig: %w", s.Key, err)
	}
	return &Fetched{Raw: raw, Sig: sig, Token: info.ETag, Origin: s.Store.String() + "/" + s.Key, Remote: true}, nil
}

// File reads a local assignments file (+ .sig beside it, when present).
type File struct {
	Path string
}

func fileToken(fi os.FileInfo) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf("file:%x-%x-%x", ino, fi.Size(), fi.ModTime().UnixNano())
}

func (f *File) Fetch(ctx context.Context, since string) (*Fetched, error) {
	fi, err := os.Stat(f.Path)
	if err != nil {
		return nil, fmt.Errorf("assignments: %w", err)
	}
	token := fileToken(fi)
	if sfi, err := os.Stat(f.Path + ".sig"); err == nil {
		token += "+" + fileToken(sfi)
	}
	if since != "" && token == since {
		return nil, ErrUnchanged
	}
	if fi.Size() > assignment.MaxDocumentSize {
		return nil, fmt.Errorf("assignments %s: %d bytes, more than %d", f.Path, fi.Size(), assignment.MaxDocumentSize)
	}
	raw, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, fmt.Errorf("assignments: %w", err)
	}
	sig, err := os.ReadFile(f.Path + ".sig")
	if errors.Is(err, os.ErrNotExist) {
		sig, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("assignments: %w", err)
	}
	return &Fetched{Raw: raw, Sig: sig, Token: token, Origin: f.Path}, nil
}

// Policy is what Accept checks a document against.
type Policy struct {
	AgentID           string
	Keys              *signing.Keyring
	RequireSignatures bool
	LastSerial        uint64
	// LastDigest is DocumentDigest of the document applied at
	// LastSerial; "" when unknown (state from before it was kept).
	LastDigest string
}

// DocumentDigest identifies a document's exact bytes (hex sha256). The
// bytes, not the parsed content: a newer addond that understands more
// fields must still recognize the document it applied before.
func DocumentDigest(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// Rejection reasons callers and status distinguish.
var (
	ErrUnsigned     = errors.New("assignment document is unsigned and trust.require_signatures is on")
	ErrOtherAgent   = errors.New("assignment document is for another agent")
	ErrSerialReplay = errors.New("assignment document refused as a replay")
)

// ReplayError is a document refused as a replay: a serial lower than the
// last applied one, or (signatures required) the last applied serial with
// different content.
type ReplayError struct {
	Serial, LastSerial uint64
	// SameSerial: the serial equals the last applied one, the content
	// differs.
	SameSerial bool
}

func (e *ReplayError) Error() string {
	if e.SameSerial {
		return fmt.Sprintf("serial %d was already applied with different content: refused as a replay", e.Serial)
	}
	return fmt.Sprintf("serial %d is lower than %d, the last applied: refused as a replay", e.Serial, e.LastSerial)
}

func (e *ReplayError) Unwrap() error { return ErrSerialReplay }

// Accept verifies and parses a fetched document. A document from the store
// must be signed when signatures are required; a local file is the
// operator's own configuration and its .sig is verified when present.
//
// Replays are refused (a *ReplayError): a serial lower than the last
// applied one, for any document from the store and, when signatures are
// required, for any document at all; and, when signatures are required,
// the last applied serial with other bytes (fetching the same document
// again is accepted). A local file without signatures required may go back: it
// is the operator's own configuration.
func Accept(f *Fetched, p Policy) (*assignment.Document, error) {
	if f.Sig != nil {
		sig, err := signing.ParseSigFile(f.Sig)
		if err != nil {
			return nil, fmt.Errorf("assignments %s.sig: %w", f.Origin, err)
		}
		if err := p.Keys.VerifyBytes("", f.Raw, sig); err != nil {
			return nil, fmt.Errorf("assignments %s: %w", f.Origin, err)
		}
	} else if p.RequireSignatures && f.Remote {
		return nil, fmt.Errorf("assignments %s: %w", f.Origin, ErrUnsigned)
	}
	doc, err := assignment.Parse(f.Raw)
	if err != nil {
		return nil, fmt.Errorf("assignments %s: %w", f.Origin, err)
	}
	if doc.AgentID != p.AgentID && (f.Remote || doc.AgentID != "") {
		return nil, fmt.Errorf("assignments %s: %w: agent_id %q, this agent is %q", f.Origin, ErrOtherAgent, doc.AgentID, p.AgentID)
	}
	if (p.RequireSignatures || f.Remote) && doc.Serial < p.LastSerial {
		return nil, fmt.Errorf("assignments %s: %w", f.Origin, &ReplayError{Serial: doc.Serial, LastSerial: p.LastSerial})
	}
	if p.RequireSignatures && doc.Serial == p.LastSerial && p.LastDigest != "" && DocumentDigest(f.Raw) != p.LastDigest {
		return nil, fmt.Errorf("assignments %s: %w", f.Origin, &ReplayError{Serial: doc.Serial, LastSerial: p.LastSerial, SameSerial: true})
	}
	return doc, nil
}

// Jitter spreads polls of a fleet of agents on one bucket: the interval
// varies uniformly by ±20 %, so thousands of agents started together drift
// apart instead of arriving in lockstep.
func Jitter(interval time.Duration) time.Duration {
	if interval <= 0 {
		return interval
	}
	spread := interval / 5
	return interval - spread + rand.N(2*spread+1)
}
