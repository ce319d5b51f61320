package rdb

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// lzfDecompress expands liblzf's format into exactly n bytes.
func lzfDecompress(in []byte, n int) ([]byte, error) {
	out := make([]byte, 0, n)
	for i := 0; i < len(in); {
		ctrl := int(in[i])
		i++
		if ctrl < 32 { // literal run
			l := ctrl + 1
			if i+l > len(in) || len(out)+l > n {
				return nil, fmt.Errorf("%w: LZF literal overrun", ErrFormat)
			}
			out = append(out, in[i:i+l]...)
			i += l
			continue
		}
		l := ctrl >> 5
		if l == 7 {
			if i >= len(in) {
				return nil, fmt.Errorf("%w: LZF truncated", ErrFormat)
			}
			l += int(in[i])
			i++
		}
		if i >= len(in) {
			return nil, fmt.Errorf("%w: LZF truncated", ErrFormat)
		}
		ref := len(out) - (ctrl&0x1f)<<8 - int(in[i]) - 1
		i++
		l += 2
		if ref < 0 || len(out)+l > n {
			return nil, fmt.Errorf("%w: LZF back reference out of range", ErrFormat)
		}
		for j := range l { // may overlap what it appends
			out = append(out, out[ref+j])
		}
	}
	if len(out) != n {
		return nil, fmt.Errorf("%w: LZF gave %d bytes, want %d", ErrFormat, len(out), n)
	}
	return out, nil
}

// listpackEntries decodes a listpack (Redis listpack.c): total bytes,
// element count, entries each followed by its back-length, 0xFF.
func listpackEntries(b []byte) ([][]byte, error) {
	if len(b) < 7 || int(binary.LittleEndian.Uint32(b)) != len(b) || b[len(b)-1] != 0xff {
		return nil, fmt.Errorf("%w: listpack header", ErrFormat)
	}
	var out [][]byte
	i := 6
	bad := func(what string) error { return fmt.Errorf("%w: listpack %s at byte %d", ErrFormat, what, i) }
	for {
		if i >= len(b) {
			return nil, bad("without end")
		}
		c := b[i]
		if c == 0xff {
			if i != len(b)-1 {
				return nil, bad("end before the last byte")
			}
			return out, nil
		}
		start := i
		var v []byte
		need := func(n int) bool { return i+n <= len(b)-1 }
		switch {
		case c&0x80 == 0: // 7-bit unsigned
			v = strconv.AppendInt(nil, int64(c&0x7f), 10)
			i++
		case c&0xc0 == 0x80: // 6-bit string length
			l := int(c & 0x3f)
			if !need(1 + l) {
				return nil, bad("string")
			}
			v = b[i+1 : i+1+l]
			i += 1 + l
		case c&0xe0 == 0xc0: // 13-bit signed
			if !need(2) {
				return nil, bad("int")
			}
			u := int64(c&0x1f)<<8 | int64(b[i+1])
			if u >= 1<<12 {
				u -= 1 << 13
			}
			v = strconv.AppendInt(nil, u, 10)
			i += 2
		case c&0xf0 == 0xe0: // 12-bit string length
			if !need(2) {
				return nil, bad("string")
			}
			l := int(c&0x0f)<<8 | int(b[i+1])
			if !need(2 + l) {
				return nil, bad("string")
			}
			v = b[i+2 : i+2+l]
			i += 2 + l
		case c == 0xf0: // 32-bit string length
			if !need(5) {
				return nil, bad("string")
			}
			l := int(binary.LittleEndian.Uint32(b[i+1:]))
			if l < 0 || !need(5+l) {
				return nil, bad("string")
			}
			v = b[i+5 : i+5+l]
			i += 5 + l
		case c >= 0xf1 && c <= 0xf4: // 16, 24, 32, 64-bit signed
			n := map[byte]int{0xf1: 2, 0xf2: 3, 0xf3: 4, 0xf4: 8}[c]
			if !need(1 + n) {
				return nil, bad("int")
			}
			var u uint64
			for j := n - 1; j >= 0; j-- {
				u = u<<8 | uint64(b[i+1+j])
			}
			s := int64(u<<(64-8*n)) >> (64 - 8*n) // sign-extend
			v = strconv.AppendInt(nil, s, 10)
			i += 1 + n
		default:
			return nil, bad("encoding")
		}
		// The back-length: 1 to 5 bytes, the entry's size in 7-bit groups.
		size := i - start
		bl := 1
		for limit := 127; size > limit && bl < 5; limit = limit<<7 | 127 {
			bl++
		}
		if !need(bl) {
			return nil, bad("back-length")
		}
		i += bl
		out = append(out, v)
	}
}

// ziplistEntries decodes a ziplist (Redis ziplist.c, RDB <= 9).
func ziplistEntries(b []byte) ([][]byte, error) {
	if len(b) < 11 || int(binary.LittleEndian.Uint32(b)) != len(b) || b[len(b)-1] != 0xff {
		return nil, fmt.Errorf("%w: ziplist header", ErrFormat)
	}
	var out [][]byte
	i := 10
	bad := func(what string) error { return fmt.Errorf("%w: ziplist %s at byte %d", ErrFormat, what, i) }
	for {
		if i >= len(b) {
			return nil, bad("without end")
		}
		if b[i] == 0xff {
			return out, nil
		}
		// previous entry length: 1 byte, or 0xFE and 4 bytes
		if b[i] == 0xfe {
			i += 5
		} else {
			i++
		}
		if i >= len(b)-1 {
			return nil, bad("entry")
		}
		need := func(n int) bool { return i+n <= len(b)-1 }
		c := b[i]
		var v []byte
		switch c >> 6 {
		case 0:
			l := int(c & 0x3f)
			if !need(1 + l) {
				return nil, bad("string")
			}
			v = b[i+1 : i+1+l]
			i += 1 + l
		case 1:
			if !need(2) {
				return nil, bad("string")
			}
			l := int(c&0x3f)<<8 | int(b[i+1])
			if !need(2 + l) {
				return nil, bad("string")
			}
			v = b[i+2 : i+2+l]
			i += 2 + l
		case 2:
			if !need(5) {
				return nil, bad("string")
			}
			l := int(binary.BigEndian.Uint32(b[i+1:]))
			if l < 0 || !need(5+l) {
				return nil, bad("string")
			}
			v = b[i+5 : i+5+l]
			i += 5 + l
		default:
			var n int
			var imm int64 = -1
			switch {
			case c == 0xc0:
				n = 2
			case c == 0xd0:
				n = 4
			case c == 0xe0:
				n = 8
			case c == 0xf0:
				n = 3
			case c == 0xfe:
				n = 1
			case c >= 0xf1 && c <= 0xfd:
				imm = int64(c&0x0f) - 1
			default:
				return nil, bad("encoding")
			}
			if imm >= 0 {
				v = strconv.AppendInt(nil, imm, 10)
				i++
				break
			}
			if !need(1 + n) {
				return nil, bad("int")
			}
			var u uint64
			for j := n - 1; j >= 0; j-- {
				u = u<<8 | uint64(b[i+1+j])
			}
			s := int64(u<<(64-8*n)) >> (64 - 8*n)
			v = strconv.AppendInt(nil, s, 10)
			i += 1 + n
		}
		out = append(out, v)
	}
}

// intsetEntries decodes an intset: element size, count, little-endian ints.
func intsetEntries(b []byte) ([][]byte, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: intset header", ErrFormat)
	}
	size := int(binary.LittleEndian.Uint32(b))
	n := int(binary.LittleEndian.Uint32(b[4:]))
	if (size != 2 && size != 4 && size != 8) || n < 0 || len(b) != 8+n*size {
		return nil, fmt.Errorf("%w: intset of %d bytes, encoding %d, %d elements", ErrFormat, len(b), size, n)
	}
	out := make([][]byte, n)
	for j := range n {
		p := b[8+j*size:]
		var s int64
		switch size {
		case 2:
			s = int64(int16(binary.LittleEndian.Uint16(p)))
		case 4:
			s = int64(int32(binary.LittleEndian.Uint32(p)))
		case 8:
			s = int64(binary.LittleEndian.Uint64(p))
		}
		out[j] = strconv.AppendInt(nil, s, 10)
	}
	return out, nil
}

// zipmapEntries decodes a zipmap (Redis < 2.6 hashes): field, value, ...
func zipmapEntries(b []byte) ([][]byte, error) {
	var out [][]byte
	i := 1
	bad := func(what string) error { return fmt.Errorf("%w: zipmap %s at byte %d", ErrFormat, what, i) }
	length := func() (int, error) {
		if i >= len(b) {
			return 0, bad("length")
		}
		switch c := b[i]; {
		case c < 254:
			i++
			return int(c), nil
		case c == 254 && i+5 <= len(b):
			l := int(binary.LittleEndian.Uint32(b[i+1:]))
			i += 5
			return l, nil
		}
		return 0, bad("length")
	}
	for {
		if i >= len(b) {
			return nil, bad("without end")
		}
		if b[i] == 0xff {
			if len(out)%2 != 0 {
				return nil, bad("odd entries")
			}
			return out, nil
		}
		l, err := length()
		if err != nil {
			return nil, err
		}
		if l < 0 || i+l > len(b) {
			return nil, bad("field")
		}
		out = append(out, b[i:i+l])
		i += l
		if l, err = length(); err != nil {
			return nil, err
		}
		if i >= len(b) {
			return nil, bad("free")
		}
		free := int(b[i])
		i++
		if l < 0 || i+l+free > len(b) {
			return nil, bad("value")
		}
		out = append(out, b[i:i+l])
		i += l + free
	}
}
