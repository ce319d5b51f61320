package rediscmd

import (
	"bytes"
	"fmt"
	"strconv"
)

// SplitRequest returns the arguments of one complete request as framed by
// replication/framing: a RESP array of bulk strings, or an inline command
// (split the way redis-server splits it: spaces, "double quotes" with
// escapes, 'single quotes'). The slices alias raw.
func SplitRequest(raw []byte) ([][]byte, error) {
	if len(raw) > 0 && raw[0] == '*' {
		return splitMultibulk(raw)
	}
	return splitInline(raw)
}

func splitMultibulk(raw []byte) ([][]byte, error) {
	line, rest, ok := cutLine(raw)
	if !ok {
		return nil, fmt.Errorf("request header not terminated")
	}
	n, err := strconv.Atoi(string(line[1:]))
	if err != nil || n < 0 || n > len(raw) {
		return nil, fmt.Errorf("bad argument count %q", line)
	}
	args := make([][]byte, 0, n)
	for range n {
		line, rest, ok = cutLine(rest)
		if !ok || len(line) < 2 || line[0] != '$' {
			return nil, fmt.Errorf("bad bulk header")
		}
		size, err := strconv.Atoi(string(line[1:]))
		if err != nil || size < 0 || size > len(rest)-2 {
			return nil, fmt.Errorf("bad bulk length %q", line)
		}
		args = append(args, rest[:size:size])
		rest = rest[size+2:]
	}
	return args, nil
}

func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+2:], true
}

// splitInline follows redis-server's sdssplitargs.
func splitInline(raw []byte) ([][]byte, error) {
	s := bytes.TrimRight(raw, "\r\n")
	var args [][]byte
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			return args, nil
		}
		var cur []byte
		switch s[i] {
		case '"':
			i++
			for {
				if i >= len(s) {
					return nil, fmt.Errorf("unbalanced quotes in inline request")
				}
				c := s[i]
				switch {
				case c == '\\' && i+3 < len(s) && s[i+1] == 'x' && isHex(s[i+2]) && isHex(s[i+3]):
					v, _ := strconv.ParseUint(string(s[i+2:i+4]), 16, 8)
					cur = append(cur, byte(v))
					i += 4
					continue
				case c == '\\' && i+1 < len(s):
					i++
					switch s[i] {
					case 'n':
						c = '\n'
					case 'r':
						c = '\r'
					case 't':
						c = '\t'
					case 'b':
						c = '\b'
					case 'a':
						c = '\a'
					default:
						c = s[i]
					}
				case c == '"':
					if i+1 < len(s) && !isSpace(s[i+1]) {
						return nil, fmt.Errorf("closing quote must be followed by a space in inline request")
					}
					i++
					args = append(args, cur)
					goto next
				}
				cur = append(cur, c)
				i++
			}
		case '\'':
			i++
			for {
				if i >= len(s) {
					return nil, fmt.Errorf("unbalanced quotes in inline request")
				}
				c := s[i]
				if c == '\\' && i+1 < len(s) && s[i+1] == '\'' {
					cur = append(cur, '\'')
					i += 2
					continue
				}
				if c == '\'' {
					if i+1 < len(s) && !isSpace(s[i+1]) {
						return nil, fmt.Errorf("closing quote must be followed by a space in inline request")
					}
					i++
					args = append(args, cur)
					goto next
				}
				cur = append(cur, c)
				i++
			}
		default:
			start := i
			for i < len(s) && !isSpace(s[i]) && s[i] != '"' && s[i] != '\'' {
				i++
			}
			args = append(args, s[start:i:i])
		}
	next:
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}
func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// EncodeRequest renders args as a RESP array of bulk strings.
func EncodeRequest(args [][]byte) []byte {
	n := 16
	for _, a := range args {
		n += len(a) + 16
	}
	b := make([]byte, 0, n)
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// Rewrite rewrites one complete framed request (see Command.Rewrite) stamped
// with the origin's clock; it returns raw itself when nothing changes.
func Rewrite(raw []byte, nowMs int64) ([]byte, error) {
	args, err := SplitRequest(raw)
	if err != nil || len(args) == 0 {
		return raw, err
	}
	var sub []byte
	if len(args) > 1 {
		sub = args[1]
	}
	c, ok := Lookup(args[0], sub)
	if !ok {
		return raw, nil
	}
	if out := c.Rewrite(args, nowMs); out != nil {
		return EncodeRequest(out), nil
	}
	return raw, nil
}

func eq(a []byte, s string) bool { return bytes.EqualFold(a, []byte(s)) }

func parseInt(a []byte) (int64, bool) {
	n, err := strconv.ParseInt(string(a), 10, 64)
	return n, err == nil
}
