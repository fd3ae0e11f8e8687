package publish

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestRereadWhileSigLags: a read that fails with ErrSigLag is tried again,
// sigLagWait apart, until it succeeds or sigLagAttempts reads have failed;
// any other error, and a cancelled context, end it at once.
func TestRereadWhileSigLags(t *testing.T) {
	lagging := fmt.Errorf("agents/a/assignments.json does not verify: %w", ErrSigLag)
	other := errors.New("access denied")
	for _, tc := range []struct {
		name      string
		fails     []error // the reads' errors in turn; then nil
		wantReads int
		want      error
	}{
		{"verifies at once", nil, 1, nil},
		{"a .sig that catches up on the third read", []error{lagging, lagging}, 3, nil},
		{"a .sig that never catches up", repeat(lagging, 20), sigLagAttempts, ErrSigLag},
		{"another error is not read again", []error{other, lagging}, 1, other},
		{"a lag, then another error", []error{lagging, other}, 2, other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reads := 0
			start := time.Now()
			err := RereadWhileSigLags(context.Background(), func() error {
				reads++
				if reads <= len(tc.fails) {
					return tc.fails[reads-1]
				}
				return nil
			})
			if reads != tc.wantReads || !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("%d reads, %v; want %d reads, %v", reads, err, tc.wantReads, tc.want)
			}
			if waited, least := time.Since(start), time.Duration(reads-1)*sigLagWait; waited < least {
				t.Errorf("%d reads in %v: want them %v apart", reads, waited, sigLagWait)
			}
		})
	}

	t.Run("cancelled while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		reads := 0
		err := RereadWhileSigLags(ctx, func() error {
			reads++
			cancel()
			return lagging
		})
		if reads != 1 || !errors.Is(err, context.Canceled) {
			t.Fatalf("%d reads, %v; want 1 read, context.Canceled", reads, err)
		}
	})
}

func repeat(err error, n int) []error {
	errs := make([]error, n)
	for i := range errs {
		errs[i] = err
	}
	return errs
}
