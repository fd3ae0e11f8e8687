package capabilities

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// XattrName is the extended attribute that holds a file's capabilities.
const XattrName = "security.capability"

// The vfs_cap_data layout (linux/capability.h).
const (
	revisionMask     = 0xFF000000
	revision2        = 0x02000000
	revision3        = 0x03000000
	flagEffective    = 0x000001
	sizeRevision2    = 4 + 2*8
	sizeRevision3    = sizeRevision2 + 4
	maxCapsRevision2 = 64
)

// FileCaps is what a security.capability attribute says.
type FileCaps struct {
	Permitted   Set
	Inheritable Set
	Effective   bool   // raise the permitted set into the effective one at exec ("+ep")
	RootID      uint32 // revision 3: the namespace root uid the caps apply to
	Revision    int    // 2 or 3
}

// Encode is the attribute's bytes: revision 2, or 3 when RootID is set
// (capabilities that apply only in the user namespace whose root is RootID).
func (f FileCaps) Encode() []byte {
	size, magic := sizeRevision2, uint32(revision2)
	if f.RootID != 0 || f.Revision == 3 {
		size, magic = sizeRevision3, revision3
	}
	if f.Effective {
		magic |= flagEffective
	}
	b := make([]byte, size)
	le := binary.LittleEndian
	le.PutUint32(b[0:], magic)
	le.PutUint32(b[4:], uint32(f.Permitted))
	le.PutUint32(b[8:], uint32(f.Inheritable))
	le.PutUint32(b[12:], uint32(f.Permitted>>32))
	le.PutUint32(b[16:], uint32(f.Inheritable>>32))
	if size == sizeRevision3 {
		le.PutUint32(b[20:], f.RootID)
	}
	return b
}

// DecodeFileCaps reads a security.capability attribute.
func DecodeFileCaps(b []byte) (FileCaps, error) {
	if len(b) < 4 {
		return FileCaps{}, errors.New("capability attribute: too short")
	}
	le := binary.LittleEndian
	magic := le.Uint32(b)
	f := FileCaps{Effective: magic&flagEffective != 0}
	if magic&^(revisionMask|flagEffective) != 0 {
		return FileCaps{}, fmt.Errorf("capability attribute: unknown flags %#x", magic)
	}
	switch magic & revisionMask {
	case revision2:
		if len(b) != sizeRevision2 {
			return FileCaps{}, fmt.Errorf("capability attribute: revision 2 with %d bytes", len(b))
		}
		f.Revision = 2
	case revision3:
		if len(b) != sizeRevision3 {
			return FileCaps{}, fmt.Errorf("capability attribute: revision 3 with %d bytes", len(b))
		}
		f.Revision, f.RootID = 3, le.Uint32(b[20:])
	default:
		return FileCaps{}, fmt.Errorf("capability attribute: unsupported revision %#x", magic&revisionMask)
	}
	f.Permitted = Set(le.Uint32(b[4:])) | Set(le.Uint32(b[12:]))<<32
	f.Inheritable = Set(le.Uint32(b[8:])) | Set(le.Uint32(b[16:]))<<32
	return f, nil
}

// SetFile gives the open file f the capabilities s, permitted and
// effective ("s+ep"), through its descriptor: whatever its path now
// points to does not matter. An empty s removes the attribute.
func SetFile(f *os.File, s Set) error {
	if s == 0 {
		err := unix.Fremovexattr(int(f.Fd()), XattrName)
		if errors.Is(err, unix.ENODATA) {
			return nil
		}
		return err
	}
	return unix.Fsetxattr(int(f.Fd()), XattrName, FileCaps{Permitted: s, Effective: true}.Encode(), 0)
}

// GetFile reads the open file f's capabilities (none: the zero FileCaps).
func GetFile(f *os.File) (FileCaps, error) {
	b := make([]byte, 64)
	n, err := unix.Fgetxattr(int(f.Fd()), XattrName, b)
	if errors.Is(err, unix.ENODATA) {
		return FileCaps{}, nil
	}
	if err != nil {
		return FileCaps{}, err
	}
	return DecodeFileCaps(b[:n])
}
