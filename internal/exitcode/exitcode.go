// Package exitcode is the exit-status convention of the project's commands
// (smr-cri, kubectl-smr): 0 for success or a help request, 2 for a bad
// command line, 1 for any other failure.
package exitcode

import (
	"errors"
	"flag"
	"io"
)

// UsageError is a bad command line; the command exits with code 2. Usage,
// if set, prints the help of the (sub)command concerned.
type UsageError struct {
	Err   error
	Usage func(io.Writer)
}

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Of maps a command's result to its exit code: 0 for nil or flag.ErrHelp,
// 2 when a *UsageError is in the chain, 1 otherwise.
func Of(err error) int {
	var ue *UsageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		return 2
	default:
		return 1
	}
}
