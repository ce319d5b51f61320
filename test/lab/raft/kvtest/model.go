package kvtest

import (
	"fmt"

	"github.com/anishathalye/porcupine"
)

// Output of one recorded operation. Unknown marks a write whose outcome the
// client could not learn (timeout, leader lost): it may or may not have
// taken effect, at any point after its call.
type Output struct {
	Value   string
	Unknown bool
}

// Model is the porcupine model of KV, partitioned per key.
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(Op).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(Op), output.(Output)
		switch in.Kind {
		case "get":
			return out.Unknown || out.Value == st, st
		case "put":
			return true, in.Value
		case "append":
			next := st + in.Value
			return out.Unknown || out.Value == next, next
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(Op), output.(Output)
		if out.Unknown {
			return fmt.Sprintf("%s(%s,%q) -> ?", in.Kind, in.Key, in.Value)
		}
		return fmt.Sprintf("%s(%s,%q) -> %q", in.Kind, in.Key, in.Value, out.Value)
	},
}
