package exitcode

import (
	"errors"
	"flag"
	"fmt"
	"testing"
)

func TestOf(t *testing.T) {
	usage := &UsageError{Err: errors.New("-o x: want table or json")}
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"success", nil, 0},
		{"help", flag.ErrHelp, 0},
		{"wrapped help", fmt.Errorf("status: %w", flag.ErrHelp), 0},
		{"usage", usage, 2},
		{"wrapped usage", fmt.Errorf("kubectl smr: %w", usage), 2},
		{"other failure", errors.New("connection refused"), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Of(tt.err); got != tt.want {
				t.Fatalf("Of(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
	if usage.Error() != "-o x: want table or json" || !errors.Is(fmt.Errorf("x: %w", usage), usage.Err) {
		t.Fatalf("UsageError does not show or unwrap its error: %q", usage.Error())
	}
}
