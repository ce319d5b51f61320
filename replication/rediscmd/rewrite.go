package rediscmd

import (
	"math"
	"strconv"
)

const expiryWhy = "sets a key expiry, which replicas evaluate with their own clocks; a pod opts in with smr.io/redis-allow: expiry (relative expiries are then made absolute at the origin)"

func checkExpiry(args [][]byte, allow Allow) error {
	if allow&AllowExpiry == 0 {
		return refuse(string(upper(nil, args[0])), expiryWhy)
	}
	return nil
}

// deadline returns now + n*unit ms, or false if n is not an integer or the
// sum overflows (the request then goes as is: Redis refuses it the same way
// on every replica).
func deadline(n []byte, unit, nowMs int64) ([]byte, bool) {
	v, ok := parseInt(n)
	if !ok || v > (math.MaxInt64-nowMs)/unit || v < (math.MinInt64+nowMs)/unit {
		return nil, false
	}
	return strconv.AppendInt(nil, nowMs+v*unit, 10), true
}

func copyArgs(args [][]byte) [][]byte { return append([][]byte(nil), args...) }

// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]
func checkSet(args [][]byte, allow Allow) error {
	for i := 3; i < len(args); i++ {
		if eq(args[i], "EX") || eq(args[i], "PX") || eq(args[i], "EXAT") || eq(args[i], "PXAT") {
			return checkExpiry(args, allow)
		}
	}
	return nil
}

func rewriteSet(args [][]byte, nowMs int64) [][]byte {
	return rewriteTTLOptions(args, 3, nowMs)
}

// rewriteTTLOptions turns EX/PX <n> from index from on into PXAT <deadline>.
func rewriteTTLOptions(args [][]byte, from int, nowMs int64) [][]byte {
	var out [][]byte
	for i := from; i+1 < len(args); i++ {
		unit := int64(0)
		switch {
		case eq(args[i], "EX"):
			unit = 1000
		case eq(args[i], "PX"):
			unit = 1
		default:
			continue
		}
		if v, _ := parseInt(args[i+1]); v <= 0 {
			continue // Redis refuses a non-positive TTL: keep its error
		}
		d, ok := deadline(args[i+1], unit, nowMs)
		if !ok {
			continue
		}
		if out == nil {
			out = copyArgs(args)
		}
		out[i], out[i+1] = []byte("PXAT"), d
		i++
	}
	return out
}

// SETEX key seconds value, PSETEX key ms value -> SET key value PXAT deadline
func rewriteSetex(unit int64) func([][]byte, int64) [][]byte {
	return func(args [][]byte, nowMs int64) [][]byte {
		if len(args) != 4 {
			return nil
		}
		if v, _ := parseInt(args[2]); v <= 0 {
			return nil
		}
		d, ok := deadline(args[2], unit, nowMs)
		if !ok {
			return nil
		}
		return [][]byte{[]byte("SET"), args[1], args[3], []byte("PXAT"), d}
	}
}

// EXPIRE key seconds [NX|XX|GT|LT] -> PEXPIREAT key deadline [flag]
func rewriteExpire(unit int64) func([][]byte, int64) [][]byte {
	return func(args [][]byte, nowMs int64) [][]byte {
		if len(args) < 3 {
			return nil
		}
		d, ok := deadline(args[2], unit, nowMs)
		if !ok {
			return nil
		}
		out := append([][]byte{[]byte("PEXPIREAT"), args[1], d}, args[3:]...)
		return out
	}
}

// GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]
func checkGetex(args [][]byte, allow Allow) error {
	for i := 2; i < len(args); i++ {
		if eq(args[i], "EX") || eq(args[i], "PX") || eq(args[i], "EXAT") || eq(args[i], "PXAT") {
			return checkExpiry(args, allow)
		}
	}
	return nil
}

func rewriteGetex(args [][]byte, nowMs int64) [][]byte { return rewriteTTLOptions(args, 2, nowMs) }

// RESTORE key ttl serialized [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]
func checkRestore(args [][]byte, allow Allow) error {
	if len(args) > 2 && string(args[2]) != "0" {
		return checkExpiry(args, allow)
	}
	return nil
}

func rewriteRestore(args [][]byte, nowMs int64) [][]byte {
	if len(args) < 4 {
		return nil
	}
	for _, a := range args[4:] {
		if eq(a, "ABSTTL") {
			return nil
		}
	}
	if v, ok := parseInt(args[2]); !ok || v <= 0 {
		return nil
	}
	d, ok := deadline(args[2], 1, nowMs)
	if !ok {
		return nil
	}
	out := copyArgs(args)
	out[2] = d
	return append(out, []byte("ABSTTL"))
}

// XCLAIM/XAUTOCLAIM key group consumer min-idle-time ...
func checkMinIdle(args [][]byte, _ Allow) error {
	if len(args) > 4 {
		if v, ok := parseInt(args[4]); ok && v > 0 {
			return refuse(string(upper(nil, args[0])), "min-idle-time above 0 compares idle times measured by each replica's clock; only min-idle-time 0 is ordered")
		}
	}
	return nil
}

// XREAD/XREADGROUP [GROUP g c] [COUNT n] [BLOCK ms] [NOACK] STREAMS ...
func checkNoBlock(args [][]byte, _ Allow) error {
	for i := 1; i < len(args); i++ {
		if eq(args[i], "STREAMS") {
			return nil
		}
		if eq(args[i], "BLOCK") {
			return refuse(string(upper(nil, args[0]))+" BLOCK", "would stall the group's serial executor")
		}
	}
	return nil
}

// xaddIDIndex returns the index of XADD's ID argument, after its options.
func xaddIDIndex(args [][]byte) int {
	i := 2
	for i < len(args) {
		switch {
		case eq(args[i], "NOMKSTREAM"):
			i++
		case eq(args[i], "MAXLEN") || eq(args[i], "MINID"):
			i++
			if i < len(args) && (string(args[i]) == "=" || string(args[i]) == "~") {
				i++
			}
			i++ // threshold
		case eq(args[i], "LIMIT"):
			i += 2
		default:
			return i
		}
	}
	return i
}

// rewriteApprox turns "MAXLEN|MINID ~ n [LIMIT c]" into "MAXLEN|MINID = n"
// in args[from:to] and returns the new args (nil when nothing changes).
func rewriteApprox(args [][]byte, from, to int) [][]byte {
	approx := false
	for i := from; i < to; i++ {
		if string(args[i]) == "~" && i > from && (eq(args[i-1], "MAXLEN") || eq(args[i-1], "MINID")) {
			approx = true
		}
	}
	if !approx {
		return nil
	}
	out := make([][]byte, 0, len(args))
	out = append(out, args[:from]...)
	for i := from; i < to; i++ {
		switch {
		case string(args[i]) == "~" && (eq(args[i-1], "MAXLEN") || eq(args[i-1], "MINID")):
			out = append(out, []byte("="))
		case eq(args[i], "LIMIT") && i+1 < to:
			i++ // LIMIT only applies to ~; exact trimming has no limit
		default:
			out = append(out, args[i])
		}
	}
	return append(out, args[to:]...)
}

func rewriteXtrim(args [][]byte, _ int64) [][]byte { return rewriteApprox(args, 2, len(args)) }

// xaddScript adds an entry whose ID's time part is the origin's stamp, or
// the stream's last ID's time part when that is larger, so the ID never
// fails because of clock skew and every replica derives the same ID from
// the same stream. Time parts are compared as decimal strings (Lua numbers
// are doubles and would round explicit IDs near 2^64).
// KEYS[1] = stream, ARGV[1] = stamp (ms), ARGV[2] = position of the ID in
// the XADD arguments that follow the key, ARGV[3...] = those arguments.
const xaddScript = `local ms = ARGV[1]
local t = redis.call('TYPE', KEYS[1])
if t['ok'] == 'stream' then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local last = string.match(info[i + 1], '^(%d+)-')
      if #last > #ms or (#last == #ms and last > ms) then ms = last end
    end
  end
end
local args = {}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
args[tonumber(ARGV[2])] = ms .. '-*'
return redis.pcall('XADD', KEYS[1], unpack(args))`

// XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] n [LIMIT c]] *|id field value ...
func rewriteXadd(args [][]byte, nowMs int64) [][]byte {
	id := xaddIDIndex(args)
	if id >= len(args) {
		return nil // malformed: Redis answers with its own error
	}
	changed := false
	if out := rewriteApprox(args, 2, id); out != nil {
		id -= len(args) - len(out)
		args, changed = out, true
	}
	if string(args[id]) != "*" {
		if changed {
			return args // explicit ID: deterministic given the stream
		}
		return nil
	}
	out := [][]byte{[]byte("EVAL"), []byte(xaddScript), []byte("1"), args[1],
		strconv.AppendInt(nil, nowMs, 10), strconv.AppendInt(nil, int64(id-1), 10)}
	return append(out, args[2:]...)
}
