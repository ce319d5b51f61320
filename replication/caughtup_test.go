package replication

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/smr-io/smr-cri/raftcore"
)

// scriptedReadIndex answers ReadIndex with errs in turn, then with index 42.
type scriptedReadIndex struct {
	recordingOrderer
	errs  []error
	calls int
}

func (o *scriptedReadIndex) ReadIndex(context.Context) (uint64, error) {
	o.calls++
	if len(o.errs) > 0 {
		err := o.errs[0]
		o.errs = o.errs[1:]
		return 0, err
	}
	return 42, nil
}

// TestReadIndexSettled: a repair's catch-up read retries while the group is between leaders,
// and stops at once on any other error or when its context ends.
func TestReadIndexSettled(t *testing.T) {
	other := errors.New("stopped for good")
	for _, tc := range []struct {
		name      string
		errs      []error
		timeout   time.Duration
		want      uint64
		wantErr   error
		wantCalls int
	}{
		{name: "no error", want: 42, wantCalls: 1},
		{name: "leader lost then no leader, then an answer", errs: []error{raftcore.ErrLeaderLost, raftcore.ErrNoLeader}, want: 42, wantCalls: 3},
		{name: "wrapped leader lost", errs: []error{errors.Join(errors.New("group g"), raftcore.ErrLeaderLost)}, want: 42, wantCalls: 2},
		{name: "another error is not retried", errs: []error{other, raftcore.ErrLeaderLost}, wantErr: other, wantCalls: 1},
		{name: "no leader until the deadline", errs: []error{raftcore.ErrNoLeader, raftcore.ErrNoLeader, raftcore.ErrNoLeader, raftcore.ErrNoLeader,
			raftcore.ErrNoLeader, raftcore.ErrNoLeader, raftcore.ErrNoLeader, raftcore.ErrNoLeader}, timeout: 25 * time.Millisecond,
			wantErr: context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			o := &scriptedReadIndex{errs: tc.errs}
			got, err := readIndexSettled(ctx, o, 10*time.Millisecond)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Fatalf("readIndexSettled = %d, %v; want %d, %v", got, err, tc.want, tc.wantErr)
			}
			if tc.wantErr == context.DeadlineExceeded && !errors.Is(err, raftcore.ErrNoLeader) {
				t.Errorf("error %v does not say the group had no leader", err)
			}
			if tc.wantCalls > 0 && o.calls != tc.wantCalls {
				t.Errorf("%d ReadIndex calls, want %d", o.calls, tc.wantCalls)
			}
		})
	}
}
