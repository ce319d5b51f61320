package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// StepError is returned when a step of install or uninstall fails. Every
// step completed before it has been undone, unless RollbackErr says otherwise.
type StepError struct {
	Op          string // "install" or "uninstall"
	Step        string
	Err         error
	RollbackErr error
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("%s failed at step %q: %v", e.Op, e.Step, e.Err)
	if e.RollbackErr != nil {
		return msg + "; ROLLBACK ALSO FAILED, the node may be half changed: " + e.RollbackErr.Error()
	}
	return msg + " (every completed step was rolled back; the node is as it was)"
}

func (e *StepError) Unwrap() error { return e.Err }

// step is one change with its undo. undo may be nil when there is nothing
// to take back (a check, a wait).
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context) error
}

// rollbackTimeout bounds the undo of a failed run; it uses its own context
// because the caller's may be what was cancelled.
const rollbackTimeout = 2 * time.Minute

// runSteps runs steps in order. On a failure it undoes the failed step (undos
// must cope with a step that stopped half way) and the completed steps in
// reverse order, then runs after (service restarts that must see the
// restored files), and returns a *StepError.
func runSteps(ctx context.Context, op string, log io.Writer, steps []step, after func(ctx context.Context) error) error {
	var done []step
	for _, s := range steps {
		fmt.Fprintf(log, "%s: %s\n", op, s.name)
		done = append(done, s)
		if err := s.do(ctx); err != nil {
			fmt.Fprintf(log, "%s: step %q failed: %v; rolling back\n", op, s.name, err)
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			var errs []error
			for i := len(done) - 1; i >= 0; i-- {
				if done[i].undo == nil {
					continue
				}
				fmt.Fprintf(log, "%s: undo %s\n", op, done[i].name)
				if uerr := done[i].undo(rctx); uerr != nil {
					errs = append(errs, fmt.Errorf("undo %q: %w", done[i].name, uerr))
				}
			}
			if after != nil {
				if aerr := after(rctx); aerr != nil {
					errs = append(errs, aerr)
				}
			}
			return &StepError{Op: op, Step: s.name, Err: err, RollbackErr: errors.Join(errs...)}
		}
	}
	return nil
}

// waitFor calls check until it succeeds, the timeout passes or ctx ends,
// and returns the last failure.
func waitFor(ctx context.Context, timeout, interval time.Duration, check func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %s: %w", timeout, err)
		case <-t.C:
		}
	}
}
