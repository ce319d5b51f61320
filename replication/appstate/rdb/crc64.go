package rdb

// Redis' RDB checksum is CRC-64/Jones (reflected, polynomial
// 0xad93d23594c935a9, initial value 0, no final xor). hash/crc64 cannot
// compute it: it inverts the value before and after each update.
var crcTable = func() (t [256]uint64) {
	const reversed = 0x95ac9329ac4bc9b5 // 0xad93d23594c935a9 bit-reversed
	for i := range t {
		c := uint64(i)
		for range 8 {
			if c&1 == 1 {
				c = c>>1 ^ reversed
			} else {
				c >>= 1
			}
		}
		t[i] = c
	}
	return t
}()

func crc64Update(crc uint64, p []byte) uint64 {
	for _, b := range p {
		crc = crcTable[byte(crc)^b] ^ crc>>8
	}
	return crc
}
