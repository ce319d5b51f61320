package rediscmd

import (
	"fmt"
	"strings"
)

// Markdown renders the table for replication/CONTRACT.md.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| command | treatment | connection | note |\n|---|---|---|---|\n")
	for _, c := range Commands() {
		var flags []string
		for _, f := range []struct {
			f    Flags
			name string
		}{{ConnState, "state"}, {EndsConn, "ends"}, {ResetsConn, "resets"}, {Script, "script"}, {Expiry, "expiry"}} {
			if c.Has(f.f) {
				flags = append(flags, f.name)
			}
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", c.DisplayName(), c.Treatment, strings.Join(flags, ", "), c.Note)
	}
	return b.String()
}
