package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/minio/minio-go/v7"
)

// Resumable is a store that can finish a large write an earlier writer
// left unfinished, rather than start it again (S3's multipart uploads).
type Resumable interface {
	// PutResumable writes size bytes of src at key. A write of key that
	// an earlier run left unfinished is resumed: the parts it sent whose
	// SHA-256 is that of src's same part are kept, the others sent. sent
	// receives every byte of src in order, kept or sent, and is what the
	// object holds once PutResumable returns nil; kept is how many bytes
	// were already in the store. Readers never see a partial object.
	// ErrNotResumable: this store cannot (nothing was written at key).
	PutResumable(ctx context.Context, key string, src io.ReaderAt, size int64, sent io.Writer) (info Info, kept int64, err error)
}

var _ Resumable = (*S3)(nil)

// The parts of a resumable upload: PartSize each (the last smaller), more
// for an object that would need over maxParts of them.
var PartSize int64 = 16 << 20

const (
	maxParts       = 10000 // S3's
	maxPages       = maxParts/1000 + 1
	checksumAlgo   = "SHA256"
	checksumHeader = "X-Amz-Checksum-Sha256"
)

// PutResumable is a multipart upload whose every part carries its SHA-256
// (x-amz-checksum-sha256: the store checks it on arrival and lists it
// back), so that a later run knows, part by part, what it need not send
// again. An unfinished upload of the key without those checksums is not
// resumed; unfinished uploads are left to the bucket's lifecycle rule
// (AbortIncompleteMultipartUpload), as any S3 client's are.
func (s *S3) PutResumable(ctx context.Context, key string, src io.ReaderAt, size int64, sent io.Writer) (Info, int64, error) {
	obj, err := s.object(key)
	if err != nil {
		return Info{}, 0, err
	}
	partSize := max(PartSize, (size+maxParts-1)/maxParts)
	id, have, err := s.unfinished(ctx, obj)
	if err != nil {
		// Listing uploads is a permission of its own
		// (s3:ListBucketMultipartUploads, s3:ListMultipartUploadParts),
		// which an identity that may write need not have: without it
		// there is nothing to resume, and the upload starts anew.
		if code := minio.ToErrorResponse(err).StatusCode; code != http.StatusForbidden && code != http.StatusNotImplemented {
			return Info{}, 0, s.mapErr(key, err)
		}
		id, have = "", nil
	}
	if id == "" {
		id, err = s.core.NewMultipartUpload(ctx, s.cfg.Bucket, obj, minio.PutObjectOptions{
			ContentType:  "application/octet-stream",
			UserMetadata: map[string]string{"X-Amz-Checksum-Algorithm": checksumAlgo},
		})
		if err != nil {
			return Info{}, 0, s.mapErr(key, err)
		}
	}
	var (
		parts []minio.CompletePart
		kept  int64
		buf   = make([]byte, min(partSize, size))
		sums  = sha256.New() // of the parts' digests: the composite checksum
	)
	for n, off := 1, int64(0); n == 1 || off < size; n, off = n+1, off+partSize {
		part := buf[:min(partSize, size-off)]
		if _, err := io.ReadFull(io.NewSectionReader(src, off, int64(len(part))), part); err != nil {
			return Info{}, kept, fmt.Errorf("%s: %s: part %d: %w", s, key, n, err)
		}
		sum := sha256.Sum256(part)
		sums.Write(sum[:])
		b64 := base64.StdEncoding.EncodeToString(sum[:])
		if _, err := sent.Write(part); err != nil {
			return Info{}, kept, err
		}
		if p, ok := have[n]; ok && p.Size == int64(len(part)) && p.ChecksumSHA256 == b64 {
			parts = append(parts, minio.CompletePart{PartNumber: n, ETag: p.ETag, ChecksumSHA256: b64})
			kept += p.Size
			continue
		}
		p, err := s.core.PutObjectPart(ctx, s.cfg.Bucket, obj, id, n, bytes.NewReader(part), int64(len(part)), minio.PutObjectPartOptions{
			Sha256Hex:    hex.EncodeToString(sum[:]),
			CustomHeader: http.Header{checksumHeader: {b64}},
		})
		if err != nil {
			return Info{}, kept, fmt.Errorf("part %d: %w", n, s.mapErr(key, err))
		}
		// The store echoes the checksum it checked and keeps: without one
		// a later run could not tell which parts to keep, and a store
		// that kept another has the part wrong. Either way the upload is
		// not completed (the object at key stays as it was).
		if p.ChecksumSHA256 != b64 {
			s.abort(obj, id)
			if p.ChecksumSHA256 == "" {
				return Info{}, kept, fmt.Errorf("%s: %s: %w", s, key, ErrNotResumable)
			}
			return Info{}, kept, fmt.Errorf("%s: %s: part %d: the store kept checksum %q, not the part's %q", s, key, n, p.ChecksumSHA256, b64)
		}
		parts = append(parts, minio.CompletePart{PartNumber: n, ETag: p.ETag, ChecksumSHA256: b64})
	}
	ui, err := s.core.CompleteMultipartUpload(ctx, s.cfg.Bucket, obj, id, parts, minio.PutObjectOptions{})
	if err != nil {
		return Info{}, kept, s.mapErr(key, err)
	}
	// The store says what it assembled: the SHA-256 of the parts' SHA-256s
	// ("-N" for N parts), which must be the source's, kept parts included.
	composite := fmt.Sprintf("%s-%d", base64.StdEncoding.EncodeToString(sums.Sum(nil)), len(parts))
	if ui.ChecksumSHA256 != composite {
		return Info{}, kept, fmt.Errorf("%s: %s: the store assembled parts whose checksum is %q, not the source's %q", s, key, ui.ChecksumSHA256, composite)
	}
	return Info{Key: key, Size: size, ETag: ui.ETag, ModTime: ui.LastModified}, kept, nil
}

// abort ends an upload that must not complete, with a context of its own:
// the caller's may be what ended it. Failing, it leaves the parts to the
// bucket's lifecycle rule, as any unfinished upload.
func (s *S3) abort(obj, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.core.AbortMultipartUpload(ctx, s.cfg.Bucket, obj, id)
}

// unfinished finds the latest unfinished upload of obj whose parts carry
// SHA-256 checksums, and its parts by number; "" when there is none.
//
// The listings are the store's word, and the store is not trusted: pages
// are followed only while their markers are new, and at most maxPages of
// them; what a kept part claims is checked when the upload
// completes.
func (s *S3) unfinished(ctx context.Context, obj string) (string, map[int]minio.ObjectPart, error) {
	var latest minio.ObjectMultipartInfo
	keyMarker, idMarker := "", ""
	seen := map[string]bool{} // upload id markers: opaque, so not ordered
	for page := 0; page < maxPages; page++ {
		res, err := s.core.ListMultipartUploads(ctx, s.cfg.Bucket, obj, keyMarker, idMarker, "", 1000)
		if err != nil {
			return "", nil, err
		}
		for _, u := range res.Uploads {
			if u.Key == obj && (latest.UploadID == "" || u.Initiated.After(latest.Initiated)) {
				latest = u
			}
		}
		// Uploads are listed by key, then by upload: past obj's, done.
		if !res.IsTruncated || res.NextKeyMarker != obj || res.NextUploadIDMarker == "" || seen[res.NextUploadIDMarker] {
			break
		}
		seen[res.NextUploadIDMarker] = true
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
	if latest.UploadID == "" {
		return "", nil, nil
	}
	parts := map[int]minio.ObjectPart{}
	for page, marker := 0, 0; page < maxPages; page++ {
		lp, err := s.core.ListObjectParts(ctx, s.cfg.Bucket, obj, latest.UploadID, marker, 1000)
		if err != nil {
			return "", nil, err
		}
		if lp.ChecksumAlgorithm != checksumAlgo {
			return "", nil, nil // not one of these uploads
		}
		for _, p := range lp.ObjectParts {
			if p.PartNumber >= 1 && p.PartNumber <= maxParts {
				parts[p.PartNumber] = p
			}
		}
		if !lp.IsTruncated || lp.NextPartNumberMarker <= marker {
			break
		}
		marker = lp.NextPartNumberMarker
	}
	return latest.UploadID, parts, nil
}
